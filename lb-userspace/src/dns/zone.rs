//! One authoritative zone: loaded from an RFC 1035 master file with
//! hickory-proto's parser, checked, and indexed for lookups.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
};

use ahash::RandomState;
use hickory_proto::{
    rr::{DNSClass, LowerName, Name, RData, Record, RecordType},
    serialize::{
        binary::{BinDecoder, BinEncodable, Restrict},
        txt::Parser,
    },
};

/// Why a zone did not load. `line` is 1-based, when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ZoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} line {}: {}", self.file.display(), l, self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

impl std::error::Error for ZoneError {}

/// All RRsets at one owner name, by type.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// Owner name as written in the zone file.
    pub name: Name,
    /// Keyed by the type's number so iteration is in type order.
    pub rrsets: BTreeMap<u16, Vec<Record>>,
}

impl Node {
    pub fn get(&self, t: RecordType) -> Option<&[Record]> {
        self.rrsets.get(&u16::from(t)).map(std::vec::Vec::as_slice)
    }
}

/// A loaded zone.
#[derive(Debug, Clone)]
pub struct Zone {
    pub origin: Name,
    pub origin_lower: LowerName,
    pub serial: u32,
    /// The SOA record; in negative answers its TTL is `negative_ttl`.
    pub soa: Record,
    /// min(SOA TTL, SOA MINIMUM), RFC 2308 section 5.
    pub negative_ttl: u32,
    pub file: PathBuf,
    nodes: HashMap<LowerName, Node, RandomState>,
    /// Empty non-terminals: names with no data but with descendants.
    ents: HashSet<LowerName, RandomState>,
    /// Names below the apex that own an NS RRset (zone cuts).
    cuts: HashSet<LowerName, RandomState>,
    pub record_count: usize,
}

/// Result of looking for `name` in the tree.
pub enum Found<'a> {
    /// A delegation at or above the name: the cut's node.
    Cut(&'a Node),
    /// The node itself.
    Node(&'a Node),
    /// No data but descendants exist.
    EmptyNonTerminal,
    /// Synthesised from `*.<closest encloser>`.
    Wildcard(&'a Node),
    NxDomain,
}

impl Zone {
    /// Reads and parses `file` with `origin` as the initial `$ORIGIN`.
    pub fn load(origin: &Name, file: &Path) -> Result<Zone, ZoneError> {
        let err = |line: Option<usize>, reason: String| ZoneError {
            file: file.to_path_buf(),
            line,
            reason,
        };
        let text =
            std::fs::read_to_string(file).map_err(|e| err(None, format!("cannot read: {e}")))?;
        Zone::parse(origin, &text, Some(file.to_path_buf()))
            .map_err(|(line, reason)| err(line, reason))
    }

    /// Parses zone text. Errors carry the line when it can be found.
    pub fn parse(
        origin: &Name,
        text: &str,
        path: Option<PathBuf>,
    ) -> Result<Zone, (Option<usize>, String)> {
        let mut origin = origin.clone();
        origin.set_fqdn(true);
        let parsed = Parser::new(text, path.clone(), Some(origin.clone())).parse();
        let (_, rrsets) = match parsed {
            Ok(r) => r,
            Err(e) => {
                let line = find_error_line(text, &origin, path.as_deref());
                return Err((line, e.to_string()));
            }
        };
        let origin_lower = LowerName::new(&origin);
        let mut nodes: HashMap<LowerName, Node, RandomState> = HashMap::default();
        let mut record_count = 0;
        for (key, rrset) in rrsets {
            let records: Vec<Record> = rrset.records_without_rrsigs().cloned().collect();
            if records.is_empty() {
                continue;
            }
            let owner = records[0].name.clone();
            let lower = LowerName::new(&owner);
            let line = |name: &Name| find_owner_line(text, name);
            if !origin_lower.zone_of(&lower) {
                return Err((
                    line(&owner),
                    format!("{owner} ({}) is outside the zone {origin}", key.record_type),
                ));
            }
            if records.iter().any(|r| r.dns_class != DNSClass::IN) {
                return Err((line(&owner), format!("{owner}: only class IN is served")));
            }
            // What is served must read back as what was loaded: empty RDATA
            // (e.g. a TXT without strings) reads as an UPDATE record, and
            // some data the text parser takes (e.g. a CAA tag that is not
            // ASCII) encodes to bytes that do not decode; either way clients
            // reject the whole response.
            if let Some(why) = records.iter().find_map(|r| wire_problem(&r.data)) {
                return Err((line(&owner), format!("{owner} {}: {why}", key.record_type)));
            }
            record_count += records.len();
            let node = nodes.entry(lower).or_insert_with(|| Node {
                name: owner.clone(),
                rrsets: BTreeMap::new(),
            });
            node.rrsets.insert(u16::from(key.record_type), records);
        }

        let apex = nodes
            .get(&origin_lower)
            .ok_or((None, format!("no records at the apex {origin}")))?;
        let soa = match apex.get(RecordType::SOA) {
            Some([soa]) => soa.clone(),
            _ => return Err((None, format!("no SOA record at the apex {origin}"))),
        };
        if apex.get(RecordType::NS).is_none() {
            return Err((None, format!("no NS records at the apex {origin}")));
        }
        let (serial, minimum) = match &soa.data {
            RData::SOA(s) => (s.serial, s.minimum),
            _ => return Err((None, "SOA record with non-SOA data".into())),
        };
        let negative_ttl = soa.ttl.min(minimum);

        let mut cuts = HashSet::default();
        for (name, node) in &nodes {
            if node.get(RecordType::CNAME).is_some() && node.rrsets.len() > 1 {
                let others: Vec<String> = node
                    .rrsets
                    .keys()
                    .map(|t| RecordType::from(*t).to_string())
                    .filter(|t| t != "CNAME")
                    .collect();
                return Err((
                    find_owner_line(text, &node.name),
                    format!(
                        "{} has a CNAME and other data ({}); a CNAME must be alone at its name",
                        node.name,
                        others.join(", ")
                    ),
                ));
            }
            if *name == origin_lower {
                if node.get(RecordType::CNAME).is_some() {
                    return Err((None, "CNAME at the zone apex".into()));
                }
                continue;
            }
            if node.get(RecordType::SOA).is_some() {
                return Err((
                    find_owner_line(text, &node.name),
                    format!("SOA record at {} below the apex", node.name),
                ));
            }
            if node.get(RecordType::NS).is_some() {
                cuts.insert(name.clone());
            }
        }

        let mut ents = HashSet::default();
        for name in nodes.keys() {
            let mut n = name.base_name();
            while origin_lower.zone_of(&n) && n != origin_lower {
                if !nodes.contains_key(&n) {
                    ents.insert(n.clone());
                }
                n = n.base_name();
            }
        }

        Ok(Zone {
            origin,
            origin_lower,
            serial,
            soa,
            negative_ttl,
            file: path.unwrap_or_default(),
            nodes,
            ents,
            cuts,
            record_count,
        })
    }

    pub fn node(&self, name: &LowerName) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// True when the name has data or descendants.
    pub fn exists(&self, name: &LowerName) -> bool {
        self.nodes.contains_key(name) || self.ents.contains(name)
    }

    /// The SOA as it goes into the authority section of a negative answer.
    pub fn negative_soa(&self) -> Record {
        let mut soa = self.soa.clone();
        soa.ttl = self.negative_ttl;
        soa
    }

    /// The highest zone cut at or above `name` (below the apex). A cut at
    /// `name` itself is ignored when `at_name_is_parent` (DS queries are
    /// answered by the parent side).
    pub fn find_cut(&self, name: &LowerName, at_name_is_parent: bool) -> Option<&Node> {
        if self.cuts.is_empty() {
            return None;
        }
        let labels = name.num_labels();
        let apex_labels = self.origin_lower.num_labels();
        // Walk from just below the apex towards the name: the topmost cut wins.
        let name_n: Name = name.into();
        for n in (apex_labels + 1)..=labels {
            if n == labels && at_name_is_parent {
                break;
            }
            let anc = LowerName::new(&name_n.trim_to(n as usize));
            if self.cuts.contains(&anc) {
                return self.nodes.get(&anc);
            }
        }
        None
    }

    /// Looks `name` up per RFC 1034 4.3.2 and RFC 4592 (wildcards). `name`
    /// must be inside the zone.
    pub fn find(&self, name: &LowerName, qtype: RecordType) -> Found<'_> {
        if let Some(cut) = self.find_cut(name, qtype == RecordType::DS) {
            return Found::Cut(cut);
        }
        if let Some(node) = self.nodes.get(name) {
            return Found::Node(node);
        }
        if self.ents.contains(name) {
            return Found::EmptyNonTerminal;
        }
        // Closest encloser: the longest existing ancestor.
        let mut enc = name.base_name();
        while self.origin_lower.zone_of(&enc) {
            if self.exists(&enc) {
                // The source of synthesis is `*.<closest encloser>`.
                let enc_name: Name = (&enc).into();
                return match enc_name.prepend_label("*") {
                    Ok(w) => match self.nodes.get(&LowerName::new(&w)) {
                        Some(w) => Found::Wildcard(w),
                        None => Found::NxDomain,
                    },
                    Err(_) => Found::NxDomain,
                };
            }
            if enc == self.origin_lower {
                break;
            }
            enc = enc.base_name();
        }
        Found::NxDomain
    }

    /// Address records for additional-section processing of `target`:
    /// authoritative data or glue below a cut, never wildcard expansions.
    pub fn addresses(&self, target: &LowerName) -> impl Iterator<Item = &Record> {
        self.nodes.get(target).into_iter().flat_map(|n| {
            n.get(RecordType::A)
                .unwrap_or(&[])
                .iter()
                .chain(n.get(RecordType::AAAA).unwrap_or(&[]).iter())
        })
    }
}

/// Finds the line of the first parse error: the parser reads entries in
/// order and stops at the first bad one, so the shortest failing prefix of
/// whole entries ends with the culprit. Binary search over entry ends.
fn find_error_line(text: &str, origin: &Name, path: Option<&Path>) -> Option<usize> {
    let ends = entry_ends(text);
    if ends.is_empty() {
        return None;
    }
    let fails = |i: usize| {
        let (byte_end, _) = ends[i];
        Parser::new(
            &text[..byte_end],
            path.map(Path::to_path_buf),
            Some(origin.clone()),
        )
        .parse()
        .is_err()
    };
    if !fails(ends.len() - 1) {
        return None;
    }
    let (mut lo, mut hi) = (0usize, ends.len() - 1);
    while lo < hi {
        let mid = usize::midpoint(lo, hi);
        if fails(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(ends[lo].1)
}

/// (byte offset after the entry's newline, 1-based line where the entry
/// starts) for each entry, honouring quotes, `;` comments, `\` escapes and
/// parentheses that continue an entry over several lines.
fn entry_ends(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut depth, mut in_quote, mut in_comment, mut escaped) = (0i32, false, false, false);
    let mut line = 1usize;
    let mut entry_start_line = 1usize;
    let mut entry_has_data = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\n' => {
                line += 1;
                in_comment = false;
                if depth <= 0 && !in_quote {
                    if entry_has_data {
                        out.push((i + 1, entry_start_line));
                    }
                    entry_has_data = false;
                    depth = 0;
                    entry_start_line = line;
                }
                continue;
            }
            _ if in_comment => continue,
            '\\' => escaped = true,
            '"' => in_quote = !in_quote,
            ';' if !in_quote => in_comment = true,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote => depth -= 1,
            _ => {}
        }
        if !c.is_whitespace() && !in_comment {
            entry_has_data = true;
        }
    }
    if entry_has_data {
        out.push((text.len(), entry_start_line));
    }
    out
}

/// Best-effort line of the first entry whose owner is `name` (for checks
/// made after parsing). Relative owners are compared by their first label.
fn find_owner_line(text: &str, name: &Name) -> Option<usize> {
    let full = name.to_ascii().to_ascii_lowercase();
    let first = name
        .iter()
        .next()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())?;
    text.lines().enumerate().find_map(|(i, l)| {
        let owner = l.split_whitespace().next()?.to_ascii_lowercase();
        if l.starts_with(char::is_whitespace) || owner.starts_with(';') || owner.starts_with('$') {
            return None;
        }
        (owner == full
            || owner == first
            || owner.trim_end_matches('.') == full.trim_end_matches('.'))
        .then_some(i + 1)
    })
}

/// Why a record's data cannot be served, if it cannot: it encodes to
/// nothing, or its encoding does not decode to the same data.
fn wire_problem(data: &RData) -> Option<String> {
    let bytes = match data.to_bytes() {
        Ok(b) if b.is_empty() => return Some("a record without data cannot be served".into()),
        Ok(b) => b,
        Err(e) => return Some(format!("the record data cannot be encoded: {e}")),
    };
    let Ok(len) = u16::try_from(bytes.len()) else {
        return Some("the record data is longer than 65535 bytes".into());
    };
    let mut dec = BinDecoder::new(&bytes);
    match RData::read(&mut dec, data.record_type(), Restrict::new(len)) {
        Ok(back) if back == *data && dec.is_empty() => None,
        Ok(_) => Some("the record data does not read back as written (check its syntax)".into()),
        Err(e) => Some(format!(
            "the record data does not read back on the wire: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    const HEAD: &str =
        "$TTL 300\n@ IN SOA ns1 host ( 7 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 198.18.0.1\n";

    /// Found by fuzzing (fuzz/regressions/zone/txt-without-strings): a TXT
    /// without strings loaded, and every response carrying it failed to parse.
    #[test]
    fn records_without_data_are_rejected_with_their_line() {
        for rr in ["empty IN TXT", "empty 60 IN TXT ; nothing"] {
            let text = format!("{HEAD}{rr}\n");
            let (line, reason) = Zone::parse(&name("example.com."), &text, None).unwrap_err();
            assert_eq!(line, Some(5), "{rr}: {reason}");
            assert!(reason.contains("without data"), "{rr}: {reason}");
        }
    }

    /// Found by fuzzing (fuzz/regressions/zone/caa-tag-not-ascii): a CAA
    /// tag that is not ASCII loaded, and its encoding did not decode, so
    /// every response carrying it failed to parse.
    #[test]
    fn records_that_do_not_read_back_are_rejected_with_their_line() {
        let text = format!("{HEAD}caa IN CAA 0 issu\u{e9}e \"ca.example.net\"\n");
        let (line, reason) = Zone::parse(&name("example.com."), &text, None).unwrap_err();
        assert_eq!(line, Some(5), "{reason}");
        assert!(reason.contains("read back"), "{reason}");
        // A sound CAA still loads.
        let text = format!("{HEAD}caa IN CAA 0 issue \"ca.example.net\"\n");
        Zone::parse(&name("example.com."), &text, None).expect("sound CAA");
    }

    #[test]
    fn loads_and_indexes() {
        let text = format!("{HEAD}a.b.c IN A 198.18.0.2\n*.w IN TXT \"x\"\nsub IN NS ns.sub\nns.sub IN A 198.18.0.3\n");
        let z = Zone::parse(&name("example.com."), &text, None).unwrap();
        assert_eq!(z.serial, 7);
        assert_eq!(z.negative_ttl, 60);
        assert!(z.exists(&LowerName::new(&name("b.c.example.com."))));
        assert!(matches!(
            z.find(&LowerName::new(&name("c.example.com.")), RecordType::A),
            Found::EmptyNonTerminal
        ));
        assert!(matches!(
            z.find(&LowerName::new(&name("x.w.example.com.")), RecordType::A),
            Found::Wildcard(_)
        ));
        assert!(matches!(
            z.find(&LowerName::new(&name("x.y.w.example.com.")), RecordType::A),
            Found::Wildcard(_)
        ));
        assert!(matches!(
            z.find(&LowerName::new(&name("nope.example.com.")), RecordType::A),
            Found::NxDomain
        ));
        assert!(matches!(
            z.find(
                &LowerName::new(&name("deep.ns.sub.example.com.")),
                RecordType::A
            ),
            Found::Cut(_)
        ));
        assert!(matches!(
            z.find(&LowerName::new(&name("sub.example.com.")), RecordType::DS),
            Found::NxDomain | Found::Node(_)
        ));
        assert!(matches!(
            z.find(&LowerName::new(&name("A.B.C.Example.COM.")), RecordType::A),
            Found::Node(_)
        ));
    }

    #[test]
    fn errors_carry_lines() {
        let text = format!("{HEAD}ok IN A 198.18.0.2\nbad IN A 300.1.1.1\nlater IN A 198.18.0.3\n");
        let (line, reason) = Zone::parse(&name("example.com."), &text, None).unwrap_err();
        assert_eq!(line, Some(6), "{reason}");

        let text = format!("{HEAD}multi IN TXT ( \"a\"\n \"b\" )\nx IN BOGUS 1\n");
        let (line, _) = Zone::parse(&name("example.com."), &text, None).unwrap_err();
        assert_eq!(line, Some(7));

        let text = format!("{HEAD}www IN CNAME web\nwww IN A 198.18.0.9\n");
        let (line, reason) = Zone::parse(&name("example.com."), &text, None).unwrap_err();
        assert!(reason.contains("CNAME and other data"), "{reason}");
        assert_eq!(line, Some(5));

        let (_, reason) =
            Zone::parse(&name("example.com."), "$TTL 1\nwww IN A 198.18.0.1\n", None).unwrap_err();
        assert!(
            reason.contains("no records at the apex") || reason.contains("SOA"),
            "{reason}"
        );

        let text = format!("{HEAD}other.org. IN A 198.18.0.2\n");
        let (line, reason) = Zone::parse(&name("example.com."), &text, None).unwrap_err();
        assert!(reason.contains("outside the zone"), "{reason}");
        assert_eq!(line, Some(5));
    }
}

//! `lb cert`: a test PKI the way operators build one by hand with openssl:
//! a root CA, an intermediate CA signed by the root, and leaf certificates
//! (wildcards allowed) signed by the intermediate, all as PEM files.

use std::{
    fs,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};
use time::{Duration as TimeDuration, OffsetDateTime};

/// Generate a test PKI: root CA, intermediate CA, leaf certificates.
///
/// Files written to DIR: root.pem + root.key, intermediate.pem +
/// intermediate.key, and per leaf NAME.pem (leaf only), NAME.chain.pem
/// (leaf + intermediate: what `[[l7.cert]] cert` takes) and NAME.key. An
/// existing root and intermediate in DIR are reused, so leaves can be added
/// later; `--new-ca` replaces them.
#[derive(clap::Args, Debug, Clone)]
pub struct CertArgs {
    /// Output directory (created if missing).
    #[arg(long, short = 'd', default_value = "certs")]
    pub dir: PathBuf,
    /// A leaf certificate: comma-separated DNS names or IP addresses, the
    /// first one naming the files (`*.example.com` → wildcard.example.com.pem).
    /// Repeat for several leaves.
    #[arg(long = "leaf", value_name = "NAMES")]
    pub leaves: Vec<String>,
    /// Common name of the root CA.
    #[arg(long, default_value = "lb test root CA")]
    pub ca_name: String,
    /// Days a leaf certificate is valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Days the root (and, halved, the intermediate) is valid.
    #[arg(long, default_value_t = 3650)]
    pub ca_days: u32,
    /// Key algorithm: ecdsa-p256, ecdsa-p384 or ed25519.
    #[arg(long, default_value = "ecdsa-p256")]
    pub key_type: String,
    /// Replace an existing root and intermediate in DIR.
    #[arg(long)]
    pub new_ca: bool,
}

impl Default for CertArgs {
    fn default() -> Self {
        CertArgs {
            dir: PathBuf::from("certs"),
            leaves: Vec::new(),
            ca_name: "lb test root CA".into(),
            days: 365,
            ca_days: 3650,
            key_type: "ecdsa-p256".into(),
            new_ca: false,
        }
    }
}

/// Paths of what `lb cert` wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub root: PathBuf,
    pub intermediate: PathBuf,
    /// (names, leaf.pem, chain.pem, key)
    pub leaves: Vec<(Vec<String>, PathBuf, PathBuf, PathBuf)>,
}

fn algorithm(name: &str) -> Result<&'static SignatureAlgorithm> {
    Ok(match name {
        "ecdsa-p256" => &rcgen::PKCS_ECDSA_P256_SHA256,
        "ecdsa-p384" => &rcgen::PKCS_ECDSA_P384_SHA384,
        "ed25519" => &rcgen::PKCS_ED25519,
        other => bail!("--key-type {other}: use ecdsa-p256, ecdsa-p384 or ed25519"),
    })
}

fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // and without a leading zero byte
    SerialNumber::from_slice(&b)
}

fn validity(p: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    p.not_before = now - TimeDuration::hours(1);
    p.not_after = now + TimeDuration::days(days as i64);
}

fn write_file(path: &Path, data: &str, secret: bool) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// File stem for a leaf: `*.example.com` → `wildcard.example.com`.
pub fn leaf_stem(first_name: &str) -> String {
    let s = first_name.replacen("*.", "wildcard.", 1);
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn ca_params(cn: &str, days: u32, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "lb test PKI");
    p.distinguished_name = dn;
    p.is_ca = match path_len {
        None => IsCa::Ca(BasicConstraints::Unconstrained),
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
    };
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = path_len.is_some();
    validity(&mut p, days);
    p
}

/// Loads `stem.pem` + `stem.key` from `dir` as an issuer, when both exist.
fn load_issuer(dir: &Path, stem: &str) -> Result<Option<(Issuer<'static, KeyPair>, String)>> {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    if !cert.exists() || !key.exists() {
        return Ok(None);
    }
    let cert_pem =
        fs::read_to_string(&cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let key_pem =
        fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
    let kp = KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{}: not a usable private key", key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, kp)
        .with_context(|| format!("{}: not a usable CA certificate", cert.display()))?;
    Ok(Some((issuer, cert_pem)))
}

/// Writes the PKI described by `args`; returns the paths.
pub fn generate(args: &CertArgs) -> Result<Written> {
    let alg = algorithm(&args.key_type)?;
    if args.days == 0 || args.ca_days < 2 {
        bail!("--days must be at least 1 and --ca-days at least 2");
    }
    fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = args.dir.as_path();

    let reuse = !args.new_ca;
    let root = if let Some((issuer, _)) = load_issuer(dir, "root")?.filter(|_| reuse) {
        issuer
    } else {
        let kp = KeyPair::generate_for(alg)?;
        let params = ca_params(&args.ca_name, args.ca_days, None);
        let cert = params.self_signed(&kp)?;
        write_file(&dir.join("root.pem"), &cert.pem(), false)?;
        write_file(&dir.join("root.key"), &kp.serialize_pem(), true)?;
        // A fresh root invalidates an old intermediate.
        let _ = fs::remove_file(dir.join("intermediate.pem"));
        Issuer::new(params, kp)
    };
    let (inter, inter_pem) = if let Some(v) = load_issuer(dir, "intermediate")?.filter(|_| reuse) {
        v
    } else {
        let kp = KeyPair::generate_for(alg)?;
        let params = ca_params(
            &format!("{} intermediate", args.ca_name),
            args.ca_days / 2,
            Some(0),
        );
        let cert = params.signed_by(&kp, &root)?;
        let pem = cert.pem();
        write_file(&dir.join("intermediate.pem"), &pem, false)?;
        write_file(&dir.join("intermediate.key"), &kp.serialize_pem(), true)?;
        (Issuer::new(params, kp), pem)
    };

    let mut leaves = Vec::new();
    for spec in &args.leaves {
        let names: Vec<String> = spec
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if names.is_empty() {
            bail!("--leaf `{spec}`: no names");
        }
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0].as_str());
        p.distinguished_name = dn;
        for n in &names {
            if let Ok(ip) = n.parse::<IpAddr>() {
                p.subject_alt_names.push(SanType::IpAddress(ip));
            } else {
                super::config::normalize_host_pattern(n)
                    .map_err(|e| anyhow::anyhow!("--leaf: {e}"))?;
                p.subject_alt_names
                    .push(SanType::DnsName(n.to_ascii_lowercase().try_into()?));
            }
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, args.days);
        let kp = KeyPair::generate_for(alg)?;
        let cert = p.signed_by(&kp, &inter)?;
        let stem = leaf_stem(&names[0]);
        let leaf_path = dir.join(format!("{stem}.pem"));
        let chain_path = dir.join(format!("{stem}.chain.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        let leaf_pem = cert.pem();
        write_file(&leaf_path, &leaf_pem, false)?;
        write_file(&chain_path, &format!("{leaf_pem}{inter_pem}"), false)?;
        write_file(&key_path, &kp.serialize_pem(), true)?;
        leaves.push((names, leaf_path, chain_path, key_path));
    }
    Ok(Written {
        root: dir.join("root.pem"),
        intermediate: dir.join("intermediate.pem"),
        leaves,
    })
}

/// `lb cert ...`: writes a test PKI and prints what it wrote.
pub fn cert_main(args: CertArgs) -> Result<()> {
    let w = generate(&args)?;
    println!(
        "root CA:      {} (give clients this one: curl --cacert)",
        w.root.display()
    );
    println!("intermediate: {}", w.intermediate.display());
    for (names, _, chain, key) in &w.leaves {
        println!("leaf {}:", names.join(", "));
        println!("  [[l7.cert]]");
        println!("  cert = \"{}\"", chain.display());
        println!("  key = \"{}\"", key.display());
    }
    if w.leaves.is_empty() {
        println!("no --leaf given: only the CA files were written");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems() {
        assert_eq!(leaf_stem("*.example.com"), "wildcard.example.com");
        assert_eq!(leaf_stem("www.example.com"), "www.example.com");
        assert_eq!(leaf_stem("2001:db8::1"), "2001_db8__1");
    }

    #[test]
    fn generates_chain_and_reuses_ca() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let args = CertArgs {
            dir: dir.path().to_path_buf(),
            leaves: vec!["www.example.com,example.com".into(), "*.example.org".into()],
            ..CertArgs::default()
        };
        let w = generate(&args).unwrap();
        assert_eq!(w.leaves.len(), 2);
        let chain = crate::proxy::tls::read_pem_certs(&w.leaves[0].2).unwrap();
        assert_eq!(chain.len(), 2, "leaf + intermediate");
        let root_before = fs::read(&w.root).unwrap();
        let args2 = CertArgs {
            leaves: vec!["api.example.com".into()],
            ..args.clone()
        };
        generate(&args2).unwrap();
        assert_eq!(fs::read(&w.root).unwrap(), root_before, "root reused");
        // Keys are private.
        let mode = fs::metadata(&w.leaves[0].3).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
    }
}

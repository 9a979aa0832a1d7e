//! TLS termination: certificate loading, SNI selection, rustls server config.

use std::{
    collections::HashMap,
    fmt,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ahash::RandomState;
use arc_swap::ArcSwap;
use rustls::{
    crypto::ring as provider,
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::config::{normalize_host_pattern, CertConfig, TlsSpec, UnknownSni};
use crate::config::ConfigError;

/// A certificate chain and key read from PEM files.
#[derive(Clone)]
pub struct LoadedCert {
    /// Names (lower case; exact or `*.suffix`) this certificate is selected for.
    pub names: Vec<String>,
    pub default: bool,
    pub key: Arc<CertifiedKey>,
    pub cert_path: String,
    /// End of validity of the leaf, when it could be read.
    pub not_after: Option<SystemTime>,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("names", &self.names)
            .field("default", &self.default)
            .field("chain_len", &self.key.cert.len())
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// Reads `c.cert` (leaf + intermediates) and `c.key`, checks that they belong
/// together and works out the SNI names. Errors name `path.cert`, `path.key`
/// or `path.names`.
pub fn load_cert(path: &str, c: &CertConfig) -> Result<LoadedCert, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let chain = match std::fs::read(&c.cert) {
        Err(e) => {
            errors.push(ConfigError::new(
                format!("{path}.cert"),
                format!("cannot read {}: {e}", c.cert),
            ));
            None
        }
        Ok(bytes) => {
            let parsed: Result<Vec<CertificateDer<'static>>, _> =
                CertificateDer::pem_slice_iter(&bytes).collect();
            match parsed {
                Ok(v) if v.is_empty() => {
                    errors.push(ConfigError::new(
                        format!("{path}.cert"),
                        format!("{}: no PEM CERTIFICATE block found", c.cert),
                    ));
                    None
                }
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(ConfigError::new(
                        format!("{path}.cert"),
                        format!("{}: not valid PEM: {e}", c.cert),
                    ));
                    None
                }
            }
        }
    };
    let key = match std::fs::read(&c.key) {
        Err(e) => {
            errors.push(ConfigError::new(
                format!("{path}.key"),
                format!("cannot read {}: {e}", c.key),
            ));
            None
        }
        Ok(bytes) => match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(k) => match provider::sign::any_supported_type(&k) {
                Ok(k) => Some(k),
                Err(e) => {
                    errors.push(ConfigError::new(
                        format!("{path}.key"),
                        format!("{}: unsupported private key: {e}", c.key),
                    ));
                    None
                }
            },
            Err(e) => {
                errors.push(ConfigError::new(
                    format!("{path}.key"),
                    format!("{}: no usable PEM private key: {e}", c.key),
                ));
                None
            }
        },
    };
    let (Some(chain), Some(key)) = (chain, key) else {
        return Err(errors);
    };

    let (san_names, not_after) = match leaf_info(&chain[0]) {
        Ok(v) => v,
        Err(e) => {
            errors.push(ConfigError::new(
                format!("{path}.cert"),
                format!("{}: cannot parse the leaf certificate: {e}", c.cert),
            ));
            return Err(errors);
        }
    };
    let certified = CertifiedKey::new(chain, key);
    if let Err(e) = certified.keys_match() {
        errors.push(ConfigError::new(
            format!("{path}.key"),
            format!(
                "{} does not belong to the certificate in {}: {e}",
                c.key, c.cert
            ),
        ));
        return Err(errors);
    }

    let raw_names = match &c.names {
        Some(n) => n.clone(),
        None => san_names,
    };
    if raw_names.is_empty() {
        errors.push(ConfigError::new(
            format!("{path}.names"),
            format!(
                "{} has no DNS names in subjectAltName; list the names to serve it for",
                c.cert
            ),
        ));
    }
    let mut names = Vec::new();
    for (i, n) in raw_names.iter().enumerate() {
        match normalize_host_pattern(n) {
            Ok(n) => {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            Err(e) => errors.push(ConfigError::new(format!("{path}.names[{i}]"), e)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(LoadedCert {
        names,
        default: c.default,
        key: Arc::new(certified),
        cert_path: c.cert.clone(),
        not_after,
    })
}

/// DNS names from the subjectAltName and the notAfter time of a certificate.
fn leaf_info(der: &CertificateDer<'_>) -> Result<(Vec<String>, Option<SystemTime>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = gn {
                names.push(n.to_string());
            }
        }
    }
    let ts = cert.validity().not_after.timestamp();
    let not_after = u64::try_from(ts)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    Ok((names, not_after))
}

/// The certificates of one listener, indexed for SNI lookup.
#[derive(Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>, RandomState>,
    /// `example.com` for a `*.example.com` certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>, RandomState>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn new(certs: &[LoadedCert], unknown: UnknownSni) -> CertStore {
        let mut store = CertStore::default();
        for c in certs {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(suffix) => store.wildcard.insert(suffix.to_string(), c.key.clone()),
                    None => store.exact.insert(n.clone(), c.key.clone()),
                };
            }
        }
        if unknown == UnknownSni::Default {
            store.default = certs
                .iter()
                .find(|c| c.default)
                .or_else(|| certs.first())
                .map(|c| c.key.clone());
        }
        store
    }

    /// Exact name first, then a wildcard covering exactly one more label,
    /// then the default (if configured).
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }
}

/// SNI resolver shared by every handshake of a listener; reload swaps its store.
pub struct SniResolver {
    pub store: ArcSwap<CertStore>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = self.store.load().lookup(hello.server_name());
        if found.is_none() {
            log::debug!(
                "TLS: no certificate for server name {:?}; rejecting the handshake",
                hello.server_name()
            );
        }
        found
    }
}

/// Builds the rustls config of a listener: TLS 1.3 and 1.2, the provider's
/// default (AEAD, ECDHE) suites, ALPN h2 and http/1.1, session resumption.
pub fn server_config(
    resolver: Arc<SniResolver>,
    spec: &TlsSpec,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = if spec.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    cfg.session_storage = ServerSessionMemoryCache::new(16 * 1024);
    cfg.ticketer = provider::Ticketer::new()?;
    Ok(Arc::new(cfg))
}

/// Warns about certificates that expire within 14 days or have expired.
pub fn warn_expiry(listener: &str, certs: &[LoadedCert]) {
    let now = SystemTime::now();
    for c in certs {
        let Some(na) = c.not_after else { continue };
        match na.duration_since(now) {
            Err(_) => log::warn!("l7 {listener}: certificate {} has expired", c.cert_path),
            Ok(left) if left < Duration::from_hours(336) => log::warn!(
                "l7 {listener}: certificate {} expires in {} hours",
                c.cert_path,
                left.as_secs() / 3600
            ),
            Ok(_) => {}
        }
    }
}

/// Reads a PEM file of certificates (used by tests and `lb cert`).
pub fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(CertificateDer::pem_file_iter(path)?.collect::<Result<Vec<_>, _>>()?)
}

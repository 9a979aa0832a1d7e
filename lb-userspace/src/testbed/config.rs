//! A typed builder for the TOML configs tests, benchmarks and the demo run
//! `lb` with.
//!
//! The text comes out in a fixed order: top-level keys (in the order they
//! were set), `[api]`, `[metrics]`, raw sections (`[[l7]]`, `[dns]`, …,
//! added with [`ConfigBuilder::l7`], [`ConfigBuilder::dns`] or
//! [`ConfigBuilder::section`]), then one `[[vip]]` table per [`Vip`]:
//! `address`, `port`, `protocol`, the VIP's other keys, `[vip.health]`,
//! then its `[[vip.real]]` tables.
//!
//! ```
//! use lb_userspace::testbed::config::{ConfigBuilder, Health, Vip};
//! let toml = ConfigBuilder::new()
//!     .interfaces(["l0", "l1"])
//!     .no_api()
//!     .vip(
//!         Vip::tcp("198.18.100.1".parse().unwrap(), 80)
//!             .health(Health::tcp().interval("500ms"))
//!             .real("198.18.11.2".parse().unwrap(), 8080),
//!     )
//!     .build();
//! assert!(lb_userspace::config::Config::parse(&toml).is_ok(), "{toml}");
//! ```

use std::{net::IpAddr, path::Path};

use toml::Value;

use super::{real4, real6, Topology, VIP4, VIP6};

fn line(out: &mut String, key: &str, value: &Value) {
    out.push_str(&format!("{key} = {value}\n"));
}

fn path_value(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

/// A whole `lb` config.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    top: Vec<(String, Value)>,
    api: Option<Vec<(String, Value)>>,
    metrics: Option<Vec<(String, Value)>>,
    sections: Vec<String>,
    vips: Vec<Vip>,
}

impl ConfigBuilder {
    pub fn new() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The header every topology test uses: the lb namespace's interfaces
    /// and a one-second stats interval.
    pub fn topology(t: &Topology) -> ConfigBuilder {
        ConfigBuilder::new()
            .interfaces(t.lb_ifaces.iter().map(String::as_str))
            .stats_interval("1s")
    }

    /// Any top-level key.
    pub fn key(mut self, key: &str, value: impl Into<Value>) -> ConfigBuilder {
        self.top.push((key.to_string(), value.into()));
        self
    }

    pub fn interfaces<'a>(self, ifaces: impl IntoIterator<Item = &'a str>) -> ConfigBuilder {
        let list: Vec<Value> = ifaces.into_iter().map(Value::from).collect();
        self.key("interfaces", Value::Array(list))
    }

    pub fn stats_interval(self, interval: &str) -> ConfigBuilder {
        self.key("stats_interval", interval)
    }

    pub fn pin_path(self, path: &Path) -> ConfigBuilder {
        self.key("pin_path", path_value(path))
    }

    /// `[api] socket = "path"`: the admin API on a socket of the test's own.
    pub fn api_socket(self, socket: &Path) -> ConfigBuilder {
        self.api_key("socket", path_value(socket))
    }

    /// `[api] socket = ""`: no admin socket, so a test never touches
    /// `/run/lb`.
    pub fn no_api(self) -> ConfigBuilder {
        self.api_key("socket", "")
    }

    /// Any key of `[api]` (`listen`, `token_file`, …).
    pub fn api_key(mut self, key: &str, value: impl Into<Value>) -> ConfigBuilder {
        self.api
            .get_or_insert_with(Vec::new)
            .push((key.to_string(), value.into()));
        self
    }

    /// `[metrics] listen = "addr"`.
    pub fn metrics_listen(mut self, listen: &str) -> ConfigBuilder {
        self.metrics
            .get_or_insert_with(Vec::new)
            .push(("listen".to_string(), listen.into()));
        self
    }

    /// An `[[l7]]` listener (with its sub-tables), as TOML text.
    pub fn l7(self, toml: &str) -> ConfigBuilder {
        self.section(toml)
    }

    /// The `[dns]` section (with its sub-tables), as TOML text.
    pub fn dns(self, toml: &str) -> ConfigBuilder {
        self.section(toml)
    }

    /// Any other section, as TOML text, placed after `[api]` and
    /// `[metrics]` and before the VIPs.
    pub fn section(mut self, toml: &str) -> ConfigBuilder {
        self.sections.push(toml.to_string());
        self
    }

    pub fn vip(mut self, vip: Vip) -> ConfigBuilder {
        self.vips.push(vip);
        self
    }

    /// For each `(vip_port, protocol, real_port)` one NAT VIP per family
    /// (`VIP4`, `VIP6`), every real of the topology behind it with weight 1.
    pub fn services(mut self, t: &Topology, services: &[(u16, &str, u16)]) -> ConfigBuilder {
        for v6 in [false, true] {
            let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
            for (vport, proto, rport) in services {
                let mut v = Vip::new(vip, *vport, proto).mode("nat");
                for i in 1..=t.reals.len() {
                    let a: IpAddr = if v6 { real6(i).into() } else { real4(i).into() };
                    v = v.real_with(Real::new(a, *rport).weight(1));
                }
                self.vips.push(v);
            }
        }
        self
    }

    /// The TOML text.
    pub fn build(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.top {
            line(&mut s, k, v);
        }
        if let Some(api) = &self.api {
            s.push_str("\n[api]\n");
            for (k, v) in api {
                line(&mut s, k, v);
            }
        }
        if let Some(metrics) = &self.metrics {
            s.push_str("\n[metrics]\n");
            for (k, v) in metrics {
                line(&mut s, k, v);
            }
        }
        for section in &self.sections {
            s.push('\n');
            s.push_str(section);
            if !section.ends_with('\n') {
                s.push('\n');
            }
        }
        for v in &self.vips {
            v.write(&mut s);
        }
        s
    }
}

/// One `[[vip]]` table.
#[derive(Debug, Clone)]
pub struct Vip {
    address: IpAddr,
    port: u16,
    protocol: String,
    keys: Vec<(String, Value)>,
    health: Option<Health>,
    reals: Vec<Real>,
}

impl Vip {
    pub fn new(address: IpAddr, port: u16, protocol: &str) -> Vip {
        Vip {
            address,
            port,
            protocol: protocol.to_string(),
            keys: Vec::new(),
            health: None,
            reals: Vec::new(),
        }
    }

    pub fn tcp(address: IpAddr, port: u16) -> Vip {
        Vip::new(address, port, "tcp")
    }

    pub fn udp(address: IpAddr, port: u16) -> Vip {
        Vip::new(address, port, "udp")
    }

    /// Any key of the VIP table.
    pub fn key(mut self, key: &str, value: impl Into<Value>) -> Vip {
        self.keys.push((key.to_string(), value.into()));
        self
    }

    pub fn mode(self, mode: &str) -> Vip {
        self.key("mode", mode)
    }

    pub fn drain_timeout(self, timeout: &str) -> Vip {
        self.key("drain_timeout", timeout)
    }

    pub fn health(mut self, health: Health) -> Vip {
        self.health = Some(health);
        self
    }

    /// A real with only its address and port.
    pub fn real(self, address: IpAddr, port: u16) -> Vip {
        self.real_with(Real::new(address, port))
    }

    pub fn real_with(mut self, real: Real) -> Vip {
        self.reals.push(real);
        self
    }

    /// The topology's IPv4 reals `reals` (1-based), each on `port`.
    pub fn reals4(mut self, reals: &[usize], port: u16) -> Vip {
        for i in reals {
            self = self.real(real4(*i).into(), port);
        }
        self
    }

    fn write(&self, s: &mut String) {
        s.push_str("\n[[vip]]\n");
        line(s, "address", &Value::String(self.address.to_string()));
        line(s, "port", &Value::Integer(self.port.into()));
        line(s, "protocol", &Value::String(self.protocol.clone()));
        for (k, v) in &self.keys {
            line(s, k, v);
        }
        if let Some(h) = &self.health {
            s.push_str("[vip.health]\n");
            for (k, v) in &h.keys {
                line(s, k, v);
            }
        }
        for r in &self.reals {
            s.push_str("[[vip.real]]\n");
            line(s, "address", &Value::String(r.address.to_string()));
            line(s, "port", &Value::Integer(r.port.into()));
            for (k, v) in &r.keys {
                line(s, k, v);
            }
        }
    }
}

/// One `[[vip.real]]` table.
#[derive(Debug, Clone)]
pub struct Real {
    address: IpAddr,
    port: u16,
    keys: Vec<(String, Value)>,
}

impl Real {
    pub fn new(address: IpAddr, port: u16) -> Real {
        Real {
            address,
            port,
            keys: Vec::new(),
        }
    }

    pub fn weight(self, weight: u32) -> Real {
        self.key("weight", i64::from(weight))
    }

    /// Any key of the real's table.
    pub fn key(mut self, key: &str, value: impl Into<Value>) -> Real {
        self.keys.push((key.to_string(), value.into()));
        self
    }
}

/// A `[vip.health]` table.
#[derive(Debug, Clone)]
pub struct Health {
    keys: Vec<(String, Value)>,
}

impl Health {
    pub fn kind(kind: &str) -> Health {
        Health {
            keys: vec![("kind".to_string(), kind.into())],
        }
    }

    pub fn tcp() -> Health {
        Health::kind("tcp")
    }

    /// An HTTP probe of `path`.
    pub fn http(path: &str) -> Health {
        Health::kind("http").key("path", path)
    }

    /// Any key of the table.
    pub fn key(mut self, key: &str, value: impl Into<Value>) -> Health {
        self.keys.push((key.to_string(), value.into()));
        self
    }

    pub fn port(self, port: u16) -> Health {
        self.key("port", i64::from(port))
    }

    pub fn interval(self, interval: &str) -> Health {
        self.key("interval", interval)
    }

    pub fn timeout(self, timeout: &str) -> Health {
        self.key("timeout", timeout)
    }

    pub fn rise(self, rise: u32) -> Health {
        self.key("rise", i64::from(rise))
    }

    pub fn fall(self, fall: u32) -> Health {
        self.key("fall", i64::from(fall))
    }
}

//! Parsers for the values users pass on the command line: published ports,
//! volumes, memory sizes and CPU counts, spelled as Docker spells them.

use crate::ParseError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    Tcp,
    Udp,
}

impl fmt::Display for PortProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
        })
    }
}

/// `-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: PortProto,
}

impl PortMapping {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let err = |reason: &str| ParseError::new("port mapping", s, reason);
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, PortProto::Tcp),
            Some((spec, "udp")) => (spec, PortProto::Udp),
            Some(_) => return Err(err("protocol must be tcp or udp")),
            None => (s, PortProto::Tcp),
        };
        if spec.split(':').any(|p| p.contains('-')) {
            return Err(err(
                "port ranges are not supported; publish each port with its own -p",
            ));
        }
        let port = |p: &str| -> Result<u16, ParseError> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(err("ports must be numbers from 1 to 65535")),
            }
        };
        // IPv6 host addresses come in brackets: [::1]:80:80
        let (host_ip, rest) = if let Some(stripped) = spec.strip_prefix('[') {
            let (ip, rest) = stripped
                .split_once("]:")
                .ok_or_else(|| err("unclosed '['"))?;
            (
                Some(ip.parse::<IpAddr>().map_err(|_| err("bad host address"))?),
                rest,
            )
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.len() {
                2 => (None, spec),
                3 => {
                    let ip = parts[0]
                        .parse::<IpAddr>()
                        .map_err(|_| err("bad host address"))?;
                    (Some(ip), &spec[parts[0].len() + 1..])
                }
                _ => return Err(err("expected HOSTPORT:CONTAINERPORT")),
            }
        };
        let (h, c) = rest
            .split_once(':')
            .ok_or_else(|| err("expected HOSTPORT:CONTAINERPORT"))?;
        Ok(Self {
            host_ip,
            host_port: port(h)?,
            container_port: port(c)?,
            proto,
        })
    }
}

impl fmt::Display for PortMapping {
    /// Docker's PORTS column form: `0.0.0.0:8000->8000/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self
            .host_ip
            .map_or_else(|| "0.0.0.0".to_string(), |ip| ip.to_string());
        write!(
            f,
            "{ip}:{}->{}/{}",
            self.host_port, self.container_port, self.proto
        )
    }
}

/// `-v HOSTDIR:DIR[:ro|:rw]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub host_path: String,
    pub container_path: String,
    pub read_only: bool,
}

impl VolumeMount {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let err = |reason: &str| ParseError::new("volume", s, reason);
        let parts: Vec<&str> = s.split(':').collect();
        let (host, cont, ro) = match parts.as_slice() {
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [h, c, "rw"] => (*h, *c, false),
            [_, _, _] => return Err(err("mode must be ro or rw")),
            _ => return Err(err("expected HOSTDIR:DIR[:ro]")),
        };
        if !host.starts_with('/') {
            return Err(err("host directory must be an absolute path"));
        }
        if !cont.starts_with('/') || cont.split('/').any(|p| p == "..") {
            return Err(err(
                "container directory must be an absolute path without '..'",
            ));
        }
        Ok(Self {
            host_path: host.into(),
            container_path: cont.into(),
            read_only: ro,
        })
    }
}

/// Memory sizes as Docker takes them: `67108864`, `64k`, `64m`, `1g` (binary units).
pub fn parse_memory(s: &str) -> Result<u64, ParseError> {
    let err = || {
        ParseError::new(
            "memory size",
            s,
            "expected a number with an optional b, k, m or g suffix",
        )
    };
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = match lower.chars().last() {
        Some('b') => (&lower[..lower.len() - 1], 1u64),
        Some('k') => (&lower[..lower.len() - 1], 1 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some(c) if c.is_ascii_digit() => (lower.as_str(), 1),
        _ => return Err(err()),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    let bytes = n.checked_mul(mult).ok_or_else(err)?;
    if bytes < 6 << 20 {
        return Err(ParseError::new("memory size", s, "the minimum is 6m"));
    }
    Ok(bytes)
}

/// `--cpus 0.5` as a CFS quota in microseconds per 100ms period.
pub fn parse_cpus(s: &str) -> Result<u64, ParseError> {
    let err = |r: &str| ParseError::new("cpus", s, r);
    let v: f64 = s
        .parse()
        .map_err(|_| err("expected a number such as 0.5"))?;
    if !(v.is_finite() && v > 0.0 && v <= 1024.0) {
        return Err(err("must be greater than 0 and at most 1024"));
    }
    Ok(((v * 100_000.0).round() as u64).max(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let p = PortMapping::parse("8000:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.proto, p.host_ip),
            (8000, 80, PortProto::Tcp, None)
        );
        assert_eq!(p.to_string(), "0.0.0.0:8000->80/tcp");
        let p = PortMapping::parse("127.0.0.1:53:53/udp").unwrap();
        assert_eq!(p.to_string(), "127.0.0.1:53->53/udp");
        let p = PortMapping::parse("[::1]:8080:80").unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        for bad in [
            "80",
            "0:80",
            "70000:80",
            "a:b",
            "80:80/sctp",
            "1.2.3:80:80",
            ":80",
        ] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes() {
        let v = VolumeMount::parse("/srv:/data:ro").unwrap();
        assert!(v.read_only);
        assert!(VolumeMount::parse("/srv:/data").is_ok());
        for bad in [
            "srv:/data",
            "/srv:data",
            "/srv:/data:xx",
            "/srv",
            "/a:/b/../c",
        ] {
            assert!(VolumeMount::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("64m").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("8388608").unwrap(), 8 << 20);
        for bad in ["", "m", "-1m", "1m", "12x", "99999999999999999999g"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5").unwrap(), 50_000);
        assert_eq!(parse_cpus("2").unwrap(), 200_000);
        for bad in ["0", "-1", "x", "NaN", "inf"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }
}

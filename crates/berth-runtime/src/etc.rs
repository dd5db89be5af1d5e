//! Contents of the /etc files the runtime writes into a container:
//! hosts, resolv.conf and hostname. Pure functions, computed in the parent.

use std::net::Ipv4Addr;

const HOSTS_BASE: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// /etc/hosts: the usual loopback entries, `--add-host` entries, and the
/// container's own address under its hostname when it has one.
pub fn hosts(hostname: &str, own_address: Option<Ipv4Addr>, extra: &[(String, String)]) -> String {
    let mut out = String::from(HOSTS_BASE);
    for (name, addr) in extra {
        out.push_str(&format!("{addr}\t{name}\n"));
    }
    if let Some(addr) = own_address {
        if !hostname.is_empty() {
            out.push_str(&format!("{addr}\t{hostname}\n"));
        }
    }
    out
}

fn is_loopback_nameserver(line: &str) -> bool {
    let mut words = line.split_whitespace();
    if words.next() != Some("nameserver") {
        return false;
    }
    match words.next() {
        Some(addr) => {
            let addr = addr.split('%').next().unwrap_or(addr);
            addr.parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback())
        }
        None => false,
    }
}

/// /etc/resolv.conf for a container in its own network namespace: the
/// host's file without loopback nameservers (they are unreachable from
/// inside). If that removes every nameserver, the file keeps only the
/// search/options lines: no resolver is better than a wrong one here.
/// With the host network the host's file is used unchanged.
pub fn resolv_conf(host: &str, host_network: bool) -> String {
    if host_network {
        return host.to_string();
    }
    let mut out = String::new();
    for line in host.lines() {
        if !is_loopback_nameserver(line) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

pub fn hostname(hostname: &str) -> String {
    format!("{hostname}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file() {
        let h = hosts(
            "web",
            Some(Ipv4Addr::new(172, 18, 0, 2)),
            &[("db".to_string(), "10.0.0.5".to_string())],
        );
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("10.0.0.5\tdb\n"));
        assert!(h.ends_with("172.18.0.2\tweb\n"));
        assert!(!hosts("web", None, &[]).contains("web"));
    }

    #[test]
    fn resolv() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver ::1\nsearch example.com\noptions edns0\n";
        assert_eq!(
            resolv_conf(host, false),
            "# generated\nsearch example.com\noptions edns0\n"
        );
        assert_eq!(resolv_conf(host, true), host);
        let host = "nameserver 10.0.0.1\nnameserver 127.0.0.1\n";
        assert_eq!(resolv_conf(host, false), "nameserver 10.0.0.1\n");
        assert_eq!(resolv_conf("", false), "");
    }
}

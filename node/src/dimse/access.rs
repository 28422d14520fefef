//! Which peers may open an association: `--allow-ae TITLE` or `--allow-ae TITLE@HOST`.
//!
//! An AE title alone is only a label a peer chooses, so `@HOST` pins it to addresses: a host
//! name is resolved once, at start. With an empty list every calling AE is accepted (a node on
//! a trusted clinic LAN); with a list, anything else gets an A-ASSOCIATE-RJ, rejected-permanent,
//! "calling AE title not recognised" (PS3.8 9.3.4), which modalities show as such.

use std::net::{IpAddr, ToSocketAddrs};
use std::str::FromStr;

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};

/// One allowed peer: its AE title and, optionally, the addresses it must connect from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedAe {
    pub title: String,
    /// `None`: any address. `Some`: the resolved addresses of the host given.
    pub hosts: Option<Vec<IpAddr>>,
}

/// `--allow-ae` could not be understood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllowError {
    #[error("invalid AE title in {0:?}: 1 to 16 characters, no backslash")]
    Title(String),
    #[error("cannot resolve host {host:?} in --allow-ae: {reason}")]
    Host { host: String, reason: String },
}

impl FromStr for AllowedAe {
    type Err = AllowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (title, host) = match s.rsplit_once('@') {
            Some((t, h)) => (t, Some(h)),
            None => (s, None),
        };
        if !super::valid_ae_title(title) {
            return Err(AllowError::Title(s.to_owned()));
        }
        let hosts = match host {
            None => None,
            Some(h) => Some(resolve(h)?),
        };
        Ok(Self {
            title: title.trim().to_owned(),
            hosts,
        })
    }
}

fn resolve(host: &str) -> Result<Vec<IpAddr>, AllowError> {
    let err = |reason: String| AllowError::Host {
        host: host.to_owned(),
        reason,
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let ips: Vec<IpAddr> = (bare, 0)
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .map(|a| a.ip())
        .collect();
    if ips.is_empty() {
        return Err(err("no addresses".into()));
    }
    Ok(ips)
}

/// The calling AE titles allowed; empty allows every peer.
#[derive(Debug, Clone, Default)]
pub struct AllowList(pub Vec<AllowedAe>);

impl AllowList {
    /// Whether a peer calling as `title` from `ip` may associate.
    pub fn allows(&self, title: &str, ip: IpAddr) -> bool {
        let title = title.trim();
        self.0.is_empty()
            || self.0.iter().any(|a| {
                a.title == title
                    && a.hosts
                        .as_ref()
                        .is_none_or(|h| h.iter().any(|x| same_ip(*x, ip)))
            })
    }
}

/// IPv4 peers on a dual-stack socket show up as `::ffff:a.b.c.d`.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    canon(a) == canon(b)
}

/// The allow list applied to one connection (dicom-ul's hook sees titles, not addresses).
#[derive(Debug)]
pub(super) struct PeerAccess<'a> {
    pub(super) allow: &'a AllowList,
    pub(super) ip: IpAddr,
}

impl AccessControl for PeerAccess<'_> {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        _called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if self.allow.allows(calling_ae_title, self.ip) {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_list_allows_anyone() {
        assert!(AllowList::default().allows("ANY", ip("10.0.0.1")));
    }

    #[test]
    fn title_and_host_must_both_match() {
        let list = AllowList(vec![
            "CT01@10.0.0.5".parse().unwrap(),
            "PACS".parse().unwrap(),
        ]);
        assert!(list.allows("CT01", ip("10.0.0.5")));
        assert!(list.allows("CT01 ", ip("::ffff:10.0.0.5")));
        assert!(!list.allows("CT01", ip("10.0.0.6")));
        assert!(list.allows("PACS", ip("192.168.1.9")));
        assert!(!list.allows("MR01", ip("10.0.0.5")));
    }

    #[test]
    fn bad_titles_and_hosts_are_refused() {
        assert!("".parse::<AllowedAe>().is_err());
        assert!("A_TITLE_LONGER_THAN_16".parse::<AllowedAe>().is_err());
        assert!("BAD\\AE".parse::<AllowedAe>().is_err());
        assert!("CT@no-such-host.invalid".parse::<AllowedAe>().is_err());
        let v6: AllowedAe = "X@[::1]".parse().unwrap();
        assert_eq!(v6.hosts, Some(vec![ip("::1")]));
    }
}

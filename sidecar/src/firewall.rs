//! The pod firewall: nftables rules in the pod's own network namespace that let the protected
//! application port accept connections only from the pod itself (the sidecar, over loopback).
//! Unlike a NetworkPolicy it needs no CNI support; it needs `NET_ADMIN` once, in the init
//! container that installs it (`tokengate-sidecar firewall`), never in the long-running sidecar.
//!
//! The rules go in as one atomic nf_tables batch over netlink (no `nft` binary, no shell, no C
//! library): table `inet tokengate` is deleted and created again, so an init container that the
//! kubelet restarts installs the same rules once more. Besides the rule that matters the chain
//! holds a canary rule that answers a datagram to [`CANARY_ADDR`] with an ICMP
//! "administratively prohibited" error: a process without any capability, the sidecar, learns
//! from that error whether the table is in force ([`canary`]), since reading nf_tables over
//! netlink needs `NET_ADMIN` too.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use rustix::net::netlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

/// The nftables table (family `inet`: IPv4 and IPv6) holding the pod's rules.
pub const TABLE: &str = "tokengate";
/// The chain of [`TABLE`] on the input hook.
pub const CHAIN: &str = "input";
/// Loopback address and UDP port the canary rule answers with "administratively prohibited".
pub const CANARY_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 254), 9);

/// The rules for one pod: connections to `port` are reset unless they arrive over loopback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodFirewall {
    pub port: u16,
}

impl PodFirewall {
    /// The table as `nft list table inet tokengate` prints it once installed.
    pub fn nft_text(&self) -> String {
        format!(
            "table inet {TABLE} {{\n\
             \tchain {CHAIN} {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname != \"lo\" tcp dport {port} reject with tcp reset\n\
             \t\tip daddr {addr} udp dport {canary_port} reject with icmpx admin-prohibited\n\
             \t}}\n\
             }}\n",
            port = self.port,
            addr = CANARY_ADDR.ip(),
            canary_port = CANARY_ADDR.port(),
        )
    }

    /// The rules as nf_tables expressions, in chain order.
    fn rules(&self) -> [Vec<Expr>; 2] {
        let mut lo = [0u8; IFNAMSIZ];
        lo[..2].copy_from_slice(b"lo");
        let protected = vec![
            Expr::Meta(META_IIFNAME),
            Expr::Cmp(CMP_NEQ, lo.to_vec()),
            Expr::Meta(META_L4PROTO),
            Expr::Cmp(CMP_EQ, vec![IPPROTO_TCP]),
            Expr::Payload(PAYLOAD_TRANSPORT, 2, 2),
            Expr::Cmp(CMP_EQ, self.port.to_be_bytes().to_vec()),
            Expr::Reject(REJECT_TCP_RST, 0),
        ];
        let canary = vec![
            Expr::Meta(META_NFPROTO),
            Expr::Cmp(CMP_EQ, vec![NFPROTO_IPV4]),
            Expr::Payload(PAYLOAD_NETWORK, 16, 4),
            Expr::Cmp(CMP_EQ, CANARY_ADDR.ip().octets().to_vec()),
            Expr::Meta(META_L4PROTO),
            Expr::Cmp(CMP_EQ, vec![IPPROTO_UDP]),
            Expr::Payload(PAYLOAD_TRANSPORT, 2, 2),
            Expr::Cmp(CMP_EQ, CANARY_ADDR.port().to_be_bytes().to_vec()),
            Expr::Reject(REJECT_ICMPX_UNREACH, ICMPX_ADMIN_PROHIBITED),
        ];
        [protected, canary]
    }

    /// The netlink batch that installs the rules atomically, sequence numbers from `seq`:
    /// batch begin; table (created if missing, so that deleting it cannot fail); table deleted;
    /// table, chain and rules created; batch end. Every message but the batch markers asks for
    /// an acknowledgement; the second value is their sequence numbers.
    pub fn batch(&self, first_seq: u32) -> (Vec<u8>, Vec<u32>) {
        let mut out = Netlink::default();
        let mut seq = first_seq;
        let mut acked = Vec::new();
        let ack = NLM_F_REQUEST | NLM_F_ACK;

        seq = seq.wrapping_add(1);
        out.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        out.end();
        for (kind, flags) in [
            (NFT_MSG_NEWTABLE, ack | NLM_F_CREATE),
            (NFT_MSG_DELTABLE, ack),
            (NFT_MSG_NEWTABLE, ack | NLM_F_CREATE | NLM_F_EXCL),
        ] {
            seq = seq.wrapping_add(1);
            out.message(nft_type(kind), flags, seq, NFPROTO_INET, 0);
            out.attr_str(NFTA_TABLE_NAME, TABLE);
            out.end();
            acked.push(seq);
        }

        seq = seq.wrapping_add(1);
        out.message(
            nft_type(NFT_MSG_NEWCHAIN),
            ack | NLM_F_CREATE | NLM_F_EXCL,
            seq,
            NFPROTO_INET,
            0,
        );
        out.attr_str(NFTA_CHAIN_TABLE, TABLE);
        out.attr_str(NFTA_CHAIN_NAME, CHAIN);
        let hook = out.nest(NFTA_CHAIN_HOOK);
        out.attr_u32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_IN);
        out.attr_u32(NFTA_HOOK_PRIORITY, 0);
        out.close(hook);
        out.attr_u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        out.attr_str(NFTA_CHAIN_TYPE, "filter");
        out.end();
        acked.push(seq);

        for rule in self.rules() {
            seq = seq.wrapping_add(1);
            out.message(
                nft_type(NFT_MSG_NEWRULE),
                ack | NLM_F_CREATE | NLM_F_APPEND,
                seq,
                NFPROTO_INET,
                0,
            );
            out.attr_str(NFTA_RULE_TABLE, TABLE);
            out.attr_str(NFTA_RULE_CHAIN, CHAIN);
            let expressions = out.nest(NFTA_RULE_EXPRESSIONS);
            for expr in &rule {
                let element = out.nest(NFTA_LIST_ELEM);
                expr.write(&mut out);
                out.close(element);
            }
            out.close(expressions);
            out.end();
            acked.push(seq);
        }

        seq = seq.wrapping_add(1);
        out.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        out.end();
        (out.bytes, acked)
    }

    /// Installs the rules in the calling process's network namespace (needs `NET_ADMIN`
    /// there), replacing any earlier table of the same name.
    pub fn install(&self) -> Result<(), FirewallError> {
        let socket = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::RAW,
            Some(netlink::NETFILTER),
        )
        .map_err(|e| FirewallError::Netlink("opening a netfilter netlink socket", e.into()))?;
        rustix::net::bind(&socket, &netlink::SocketAddrNetlink::new(0, 0))
            .map_err(|e| FirewallError::Netlink("binding the netlink socket", e.into()))?;
        rustix::net::sockopt::set_socket_timeout(
            &socket,
            rustix::net::sockopt::Timeout::Recv,
            Some(Duration::from_secs(5)),
        )
        .map_err(|e| FirewallError::Netlink("setting the receive timeout", e.into()))?;
        let first_seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        let (batch, mut awaiting) = self.batch(first_seq);
        let kernel = netlink::SocketAddrNetlink::new(0, 0);
        let sent = rustix::net::sendto(&socket, &batch, SendFlags::empty(), &kernel)
            .map_err(|e| FirewallError::Netlink("sending the nftables batch", e.into()))?;
        if sent != batch.len() {
            return Err(FirewallError::Netlink(
                "sending the nftables batch",
                io::Error::other(format!("sent {sent} of {} bytes", batch.len())),
            ));
        }
        let mut buffer = vec![0u8; 16 * 1024];
        while !awaiting.is_empty() {
            let (len, _) = rustix::net::recv(&socket, &mut buffer[..], RecvFlags::empty())
                .map_err(|e| {
                    FirewallError::Netlink("reading the kernel's answer", io::Error::from(e))
                })?;
            for answer in acknowledgements(&buffer[..len]) {
                match answer {
                    Answer::Ack(seq) => awaiting.retain(|s| *s != seq),
                    Answer::Error(errno) => {
                        return Err(FirewallError::Refused(io::Error::from_raw_os_error(errno)));
                    }
                    Answer::Malformed => {
                        return Err(FirewallError::Netlink(
                            "reading the kernel's answer",
                            io::Error::other("malformed netlink message"),
                        ));
                    }
                    Answer::Other => {}
                }
            }
        }
        Ok(())
    }
}

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("{0}: {1}")]
    Netlink(&'static str, io::Error),
    #[error(
        "the kernel refused the nftables rules: {0} (the init container needs capability \
         NET_ADMIN and a kernel with nf_tables, inet family and the reject expression)"
    )]
    Refused(io::Error),
}

/// What the canary says about the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanaryState {
    /// The canary rule answered: the table is in force.
    InPlace,
    /// Plain "port unreachable" (or no answer): no such rule.
    Missing,
}

/// Sends one datagram to [`CANARY_ADDR`] and reads the error it earns: "administratively
/// prohibited" (EHOSTUNREACH, from the canary rule's `icmpx admin-prohibited`) means the
/// pod's table is in force; "port unreachable" (ECONNREFUSED), or nothing within `wait`,
/// means it is not. Needs no capability.
pub async fn canary(wait: Duration) -> io::Result<CanaryState> {
    let socket = tokio::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    socket.connect(SocketAddr::V4(CANARY_ADDR)).await?;
    if let Err(err) = socket.send(b"tokengate pod firewall canary").await {
        return Ok(judge(&err));
    }
    let mut buffer = [0u8; 64];
    match tokio::time::timeout(wait, socket.recv(&mut buffer)).await {
        Ok(Err(err)) => Ok(judge(&err)),
        // Something answered with data, or nothing within the wait: not our rule.
        Ok(Ok(_)) | Err(_) => Ok(CanaryState::Missing),
    }
}

fn judge(err: &io::Error) -> CanaryState {
    if err.raw_os_error() == Some(rustix::io::Errno::HOSTUNREACH.raw_os_error()) {
        CanaryState::InPlace
    } else {
        CanaryState::Missing
    }
}

// Netlink and nf_tables constants (linux/netlink.h, linux/netfilter/nfnetlink.h,
// linux/netfilter/nf_tables.h). Attribute values inside nf_tables messages are big-endian.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_ACCEPT: u32 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const META_IIFNAME: u32 = 6;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const REJECT_TCP_RST: u32 = 1;
const REJECT_ICMPX_UNREACH: u32 = 2;
const ICMPX_ADMIN_PROHIBITED: u8 = 3;
/// NFT_REG_1: the first 16-byte data register.
const REG_1: u32 = 1;
const IFNAMSIZ: usize = 16;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

fn nft_type(message: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | message
}

/// One nf_tables expression; every load goes to register 1, every comparison reads it.
#[derive(Clone, Debug)]
enum Expr {
    /// `meta` key into the register.
    Meta(u32),
    /// `cmp`: operator and the bytes compared with.
    Cmp(u32, Vec<u8>),
    /// `payload`: base, offset, length.
    Payload(u32, u32, u32),
    /// `reject`: type and ICMP code.
    Reject(u32, u8),
}

impl Expr {
    fn write(&self, out: &mut Netlink) {
        let name = match self {
            Expr::Meta(_) => "meta",
            Expr::Cmp(..) => "cmp",
            Expr::Payload(..) => "payload",
            Expr::Reject(..) => "reject",
        };
        out.attr_str(NFTA_EXPR_NAME, name);
        let data = out.nest(NFTA_EXPR_DATA);
        match self {
            Expr::Meta(key) => {
                out.attr_u32(NFTA_META_DREG, REG_1);
                out.attr_u32(NFTA_META_KEY, *key);
            }
            Expr::Cmp(op, value) => {
                out.attr_u32(NFTA_CMP_SREG, REG_1);
                out.attr_u32(NFTA_CMP_OP, *op);
                let data = out.nest(NFTA_CMP_DATA);
                out.attr(NFTA_DATA_VALUE, value);
                out.close(data);
            }
            Expr::Payload(base, offset, len) => {
                out.attr_u32(NFTA_PAYLOAD_DREG, REG_1);
                out.attr_u32(NFTA_PAYLOAD_BASE, *base);
                out.attr_u32(NFTA_PAYLOAD_OFFSET, *offset);
                out.attr_u32(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Reject(kind, code) => {
                out.attr_u32(NFTA_REJECT_TYPE, *kind);
                out.attr(NFTA_REJECT_ICMP_CODE, &[*code]);
            }
        }
        out.close(data);
    }
}

/// Netlink messages written one after another: header, `nfgenmsg`, attributes (each padded to
/// four bytes; lengths patched in when a message or nest closes).
#[derive(Default)]
struct Netlink {
    bytes: Vec<u8>,
    message_start: usize,
}

impl Netlink {
    fn message(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.message_start = self.bytes.len();
        self.bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `end`
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(&flags.to_ne_bytes());
        self.bytes.extend_from_slice(&seq.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        // struct nfgenmsg: family, version (NFNETLINK_V0), resource id (big-endian).
        self.bytes.push(family);
        self.bytes.push(0);
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
    }

    fn end(&mut self) {
        let len = (self.bytes.len() - self.message_start) as u32;
        self.bytes[self.message_start..self.message_start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = (4 + value.len()) as u16;
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.pad();
    }

    fn attr_str(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    fn attr_u32(&mut self, kind: u16, value: u32) {
        self.attr(kind, &value.to_be_bytes());
    }

    fn nest(&mut self, kind: u16) -> usize {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn close(&mut self, start: usize) {
        let len = (self.bytes.len() - start) as u16;
        self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

/// One message of the kernel's answer.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The message with this sequence number was applied.
    Ack(u32),
    /// A refused message: the errno.
    Error(i32),
    Malformed,
    Other,
}

/// The messages of one datagram of answers.
fn acknowledgements(mut data: &[u8]) -> Vec<Answer> {
    let mut answers = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            answers.push(Answer::Malformed);
            break;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        answers.push(if kind != NLMSG_ERROR {
            Answer::Other
        } else if len < 20 {
            Answer::Malformed
        } else {
            match i32::from_ne_bytes([data[16], data[17], data[18], data[19]]) {
                0 => Answer::Ack(u32::from_ne_bytes([data[8], data[9], data[10], data[11]])),
                errno => Answer::Error(-errno),
            }
        });
        let aligned = len.div_ceil(4) * 4;
        data = data.get(aligned..).unwrap_or_default();
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attributes of a message body (or a nest): (type without flags, payload).
    fn attributes(mut data: &[u8]) -> Vec<(u16, &[u8])> {
        let mut found = Vec::new();
        while data.len() >= 4 {
            let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
            let kind = u16::from_ne_bytes([data[2], data[3]]) & !NLA_F_NESTED;
            assert!(len >= 4 && len <= data.len(), "attribute length {len}");
            found.push((kind, &data[4..len]));
            data = data.get(len.div_ceil(4) * 4..).unwrap_or_default();
        }
        assert!(data.is_empty(), "trailing bytes");
        found
    }

    /// One message of a batch: type, flags, seq, nfgenmsg, body.
    type Message<'a> = (u16, u16, u32, [u8; 4], &'a [u8]);
    /// An expression's name and its data attributes.
    type Expression = (String, Vec<(u16, Vec<u8>)>);

    fn messages(mut data: &[u8]) -> Vec<Message<'_>> {
        let mut found = Vec::new();
        while !data.is_empty() {
            let len = u32::from_ne_bytes(data[0..4].try_into().expect("4")) as usize;
            assert!(
                len.is_multiple_of(4) && len >= 20 && len <= data.len(),
                "length {len}"
            );
            found.push((
                u16::from_ne_bytes([data[4], data[5]]),
                u16::from_ne_bytes([data[6], data[7]]),
                u32::from_ne_bytes(data[8..12].try_into().expect("4")),
                data[16..20].try_into().expect("4"),
                &data[20..len],
            ));
            data = &data[len..];
        }
        found
    }

    fn text(value: &[u8]) -> &str {
        std::str::from_utf8(value.strip_suffix(&[0]).expect("NUL-terminated")).expect("UTF-8")
    }

    #[test]
    fn the_batch_replaces_the_table_atomically() {
        let (batch, acked) = PodFirewall { port: 8080 }.batch(41);
        let messages = messages(&batch);
        let kinds: Vec<u16> = messages.iter().map(|m| m.0).collect();
        assert_eq!(
            kinds,
            [0x10, 0x0a00, 0x0a02, 0x0a00, 0x0a03, 0x0a06, 0x0a06, 0x11]
        );
        // Consecutive sequence numbers; batch markers address the nf_tables subsystem.
        let seqs: Vec<u32> = messages.iter().map(|m| m.2).collect();
        assert_eq!(seqs, (42..50).collect::<Vec<_>>());
        assert_eq!(messages[0].3, [0, 0, 0, 10]);
        assert_eq!(messages[7].3, [0, 0, 0, 10]);
        for message in &messages[1..7] {
            assert_eq!(message.3, [NFPROTO_INET, 0, 0, 0]);
            assert_ne!(message.1 & NLM_F_ACK, 0);
        }
        assert_eq!(acked, [43, 44, 45, 46, 47, 48]);
        // The first table message may find the table (no EXCL), the second must create it.
        assert_eq!(messages[1].1 & NLM_F_EXCL, 0);
        assert_ne!(messages[3].1 & NLM_F_EXCL, 0);
        for table in &messages[1..4] {
            assert_eq!(attributes(table.4).len(), 1);
            assert_eq!(text(attributes(table.4)[0].1), "tokengate");
        }
    }

    #[test]
    fn the_chain_hooks_input_with_filter_priority_and_accepts_by_default() {
        let (batch, _) = PodFirewall { port: 8080 }.batch(0);
        let messages = messages(&batch);
        let chain = attributes(messages[4].4);
        let kinds: Vec<u16> = chain.iter().map(|a| a.0).collect();
        assert_eq!(kinds, [1, 3, 4, 5, 7]);
        assert_eq!(text(chain[0].1), "tokengate");
        assert_eq!(text(chain[1].1), "input");
        assert_eq!(
            attributes(chain[2].1),
            [(1, &[0, 0, 0, 1][..]), (2, &[0, 0, 0, 0][..])]
        );
        assert_eq!(chain[3].1, [0, 0, 0, 1]);
        assert_eq!(text(chain[4].1), "filter");
    }

    #[test]
    fn the_protected_port_rule_resets_tcp_from_anywhere_but_loopback() {
        let (batch, _) = PodFirewall { port: 8080 }.batch(0);
        let messages = messages(&batch);
        let rule = attributes(messages[5].4);
        assert_eq!(text(rule[0].1), "tokengate");
        assert_eq!(text(rule[1].1), "input");
        assert_eq!(rule[2].0, NFTA_RULE_EXPRESSIONS);
        let expressions: Vec<Expression> = attributes(rule[2].1)
            .into_iter()
            .map(|(kind, element)| {
                assert_eq!(kind, NFTA_LIST_ELEM);
                let parts = attributes(element);
                let data = attributes(parts[1].1)
                    .into_iter()
                    .map(|(k, v)| (k, v.to_vec()))
                    .collect();
                (text(parts[0].1).to_owned(), data)
            })
            .collect();
        let names: Vec<&str> = expressions.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["meta", "cmp", "meta", "cmp", "payload", "cmp", "reject"]
        );
        // meta iifname into register 1, compared (not equal) with "lo" padded to IFNAMSIZ.
        assert_eq!(
            expressions[0].1,
            [(1, vec![0, 0, 0, 1]), (2, vec![0, 0, 0, 6])]
        );
        let mut lo = b"lo".to_vec();
        lo.resize(16, 0);
        assert_eq!(expressions[1].1[1], (2, vec![0, 0, 0, 1]));
        assert_eq!(attributes(&expressions[1].1[2].1), [(1, &lo[..])]);
        // l4proto tcp; transport header bytes 2..4 (destination port) equal 8080.
        assert_eq!(attributes(&expressions[3].1[2].1), [(1, &[6u8][..])]);
        assert_eq!(
            expressions[4].1,
            [
                (1, vec![0, 0, 0, 1]),
                (2, vec![0, 0, 0, 2]),
                (3, vec![0, 0, 0, 2]),
                (4, vec![0, 0, 0, 2])
            ]
        );
        assert_eq!(attributes(&expressions[5].1[2].1), [(1, &[0x1f, 0x90][..])]);
        // reject with tcp reset.
        assert_eq!(expressions[6].1, [(1, vec![0, 0, 0, 1]), (2, vec![0])]);
    }

    #[test]
    fn the_canary_rule_answers_admin_prohibited() {
        let (batch, _) = PodFirewall { port: 8080 }.batch(0);
        let messages = messages(&batch);
        let rule = attributes(messages[6].4);
        let elements = attributes(rule[2].1);
        let last = attributes(elements.last().expect("reject").1);
        assert_eq!(text(last[0].1), "reject");
        assert_eq!(
            attributes(last[1].1),
            [(1, &[0, 0, 0, 2][..]), (2, &[3u8][..])]
        );
        // ip daddr 127.0.0.254 and udp dport 9 are compared.
        let values: Vec<Vec<u8>> = elements
            .iter()
            .map(|(_, e)| attributes(e))
            .filter(|parts| text(parts[0].1) == "cmp")
            .map(|parts| attributes(attributes(parts[1].1)[2].1)[0].1.to_vec())
            .collect();
        assert_eq!(
            values,
            [vec![2], vec![127, 0, 0, 254], vec![17], vec![0, 9]]
        );
    }

    #[test]
    fn the_text_is_what_nft_lists() {
        let text = PodFirewall { port: 3000 }.nft_text();
        assert!(text.starts_with("table inet tokengate {\n\tchain input {\n"));
        assert!(text.contains("\t\tiifname != \"lo\" tcp dport 3000 reject with tcp reset\n"));
        assert!(
            text.contains("ip daddr 127.0.0.254 udp dport 9 reject with icmpx admin-prohibited")
        );
    }

    #[test]
    fn answers_are_acks_errors_or_malformed() {
        let message = |kind: u16, error: i32| {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&36u32.to_ne_bytes());
            bytes.extend_from_slice(&kind.to_ne_bytes());
            bytes.extend_from_slice(&[0; 2]);
            bytes.extend_from_slice(&7u32.to_ne_bytes());
            bytes.extend_from_slice(&[0; 4]);
            bytes.extend_from_slice(&error.to_ne_bytes());
            bytes.extend_from_slice(&[0; 16]);
            bytes
        };
        let mut two = message(NLMSG_ERROR, 0);
        two.extend(message(NLMSG_ERROR, -1));
        assert_eq!(acknowledgements(&two), [Answer::Ack(7), Answer::Error(1)]);
        assert_eq!(acknowledgements(&message(3, 0)), [Answer::Other]);
        let mut short = message(NLMSG_ERROR, 0);
        short[0] = 200;
        assert_eq!(acknowledgements(&short), [Answer::Malformed]);
        assert!(acknowledgements(&[1, 2, 3]).is_empty());
    }
}

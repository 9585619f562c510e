//! Who the client at the other end of a mutual TLS connection is, as far as API keys care, and
//! what a key may be bound to (RFC 8705's certificate-bound tokens).
//!
//! A connection that presented a client certificate (one the `--tls-client-ca` vouches for:
//! rustls checked the chain before the first request) carries a [`ClientIdentity`] on each of its
//! requests: the certificate's SHA-256 thumbprint and the subject alternative names it carries.
//! A key can be bound ([`ClientBinding`]) either to one certificate, by thumbprint, or to a
//! name, as RFC 8705 §2.1.2 binds clients by `tls_client_auth_san_dns`, `_uri`, `_ip` or
//! `_email`. A thumbprint binding holds only until that certificate is renewed; a name binding
//! holds across renewals, which is what short-lived certificates need (a SPIFFE ID such as
//! `uri:spiffe://example.org/ns/prod/sa/scorer`, renewed every hour by SPIRE or a service mesh).
//! The price of a name binding is trust in the CA's issuance: anyone the client CA issues a
//! certificate with that name to can use the key.
//!
//! Names compare exactly, after the canonical form each kind has here: DNS names and e-mail
//! domains in lower case without a trailing dot, IP addresses as parsed (`::1` and `0::1` are
//! one address; an IPv4-mapped IPv6 address, `::ffff:10.0.0.7`, is not `10.0.0.7`), URIs and
//! e-mail local parts as written. No wildcards: a binding cannot name one, and a certificate's
//! `*.example.org` is left out of the names it presents.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::keys::KeyError;

/// A client certificate as a key is bound to it: the SHA-256 of the certificate's DER encoding
/// (RFC 8705's `x5t#S256` thumbprint), shown and parsed as 64 hex digits. `openssl x509
/// -noout -fingerprint -sha256` prints the same digest with colons, which parse too.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientCertificate(pub(crate) [u8; 32]);

impl ClientCertificate {
    /// The thumbprint of a certificate in DER.
    pub fn of_der(der: &[u8]) -> Self {
        ClientCertificate(Sha256::digest(der).into())
    }

    /// The thumbprint of the first certificate in PEM text (a client's certificate file, whose
    /// first block is its own certificate).
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        Ok(Self::of_der(&first_certificate(pem)?))
    }

    /// The digest.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The first certificate of PEM text, in DER.
fn first_certificate(pem: &[u8]) -> Result<Vec<u8>, KeyError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    match CertificateDer::pem_slice_iter(pem).next() {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(e)) => Err(KeyError::Invalid(format!(
            "the client certificate is not valid PEM: {e}"
        ))),
        None => Err(KeyError::Invalid(
            "the client certificate file holds no CERTIFICATE block".into(),
        )),
    }
}

impl FromStr for ClientCertificate {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let digits: String = s.trim().chars().filter(|c| *c != ':').collect();
        // Hex digits only, either case (no sign: `+f` is refused; review).
        crate::hexfmt::decode_32(&digits)
            .map(ClientCertificate)
            .ok_or_else(|| {
                KeyError::Invalid(format!(
                    "'{s}' is not a SHA-256 certificate thumbprint (64 hex digits, colons \
                     allowed)"
                ))
            })
    }
}

impl fmt::Display for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hexfmt::encode(&self.0))
    }
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientCertificate({self})")
    }
}

/// The kinds of subject alternative name a key can be bound to (RFC 5280's `GeneralName`s
/// that RFC 8705 §2.1.2 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// `dNSName`: `dns:scorer.prod.example.org`.
    Dns,
    /// `uniformResourceIdentifier`: `uri:spiffe://example.org/ns/prod/sa/scorer`.
    Uri,
    /// `iPAddress`: `ip:10.0.0.7`, `ip:fd00::7`.
    Ip,
    /// `rfc822Name`: `email:ci@example.org`.
    Email,
    /// A name in the key database that this release cannot read (written by hand, or by a
    /// later release): shown as stored, and no certificate presents it, so the key it binds
    /// is refused. Never parsed from text.
    Unreadable,
}

impl NameKind {
    /// The kinds a name can be written as.
    const WRITTEN: [NameKind; 4] = [NameKind::Dns, NameKind::Uri, NameKind::Ip, NameKind::Email];

    /// The kind's prefix in a written name (`None`: not written so).
    fn prefix(self) -> Option<&'static str> {
        match self {
            NameKind::Dns => Some("dns"),
            NameKind::Uri => Some("uri"),
            NameKind::Ip => Some("ip"),
            NameKind::Email => Some("email"),
            NameKind::Unreadable => None,
        }
    }
}

/// A subject alternative name, in its canonical form (see the module's text), written
/// `<kind>:<value>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SubjectName {
    kind: NameKind,
    value: String,
}

/// The longest name taken: longer than any DNS name (253) and than URIs in practice.
const MAX_NAME: usize = 2048;

/// A DNS name in canonical form (lower case, without a trailing dot); why not, if not one.
fn dns_name(value: &str) -> Result<String, String> {
    if value.contains('*') {
        return Err(
            "a wildcard is not bound to: bind the exact name the client's \
                    certificate carries"
                .into(),
        );
    }
    let lower = value.to_ascii_lowercase();
    let host = lower.strip_suffix('.').unwrap_or(&lower);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(
            "not a DNS name (labels of letters, digits, '-' and '_', each 1 to 63 \
                    long, not starting or ending with '-', joined by '.')"
                .into(),
        );
    }
    Ok(host.to_string())
}

impl SubjectName {
    /// A name of `kind` with `value`, checked and brought to its canonical form; why not, if
    /// not.
    pub fn new(kind: NameKind, value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("the name is empty".into());
        }
        if value.len() > MAX_NAME {
            return Err(format!("the name is longer than {MAX_NAME} bytes"));
        }
        // IA5 text that prints: no spaces, no control characters, nothing outside ASCII (a
        // certificate's names are IA5Strings; an internationalised name is in its A-label form).
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a name is printable ASCII without spaces".into());
        }
        let value = match kind {
            NameKind::Dns => dns_name(value)?,
            NameKind::Uri => {
                let scheme = value.split_once(':').map(|(s, _)| s).unwrap_or("");
                let mut bytes = scheme.bytes();
                let scheme_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
                    && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
                if !scheme_ok {
                    return Err("not a URI (it starts with a scheme and ':', as \
                                spiffe://example.org/service does)"
                        .into());
                }
                value.to_string()
            }
            NameKind::Ip => value
                .parse::<IpAddr>()
                .map_err(|_| "not an IP address".to_string())?
                .to_string(),
            NameKind::Email => match value.split_once('@') {
                Some((local, domain)) if !local.is_empty() && !domain.contains('@') => {
                    let domain = dns_name(domain)
                        .map_err(|why| format!("the e-mail address's domain: {why}"))?;
                    format!("{local}@{domain}")
                }
                _ => return Err("not an e-mail address (one '@' between two parts)".into()),
            },
            NameKind::Unreadable => return Err("not a kind of name".into()),
        };
        Ok(SubjectName { kind, value })
    }

    /// The kind of name.
    pub fn kind(&self) -> NameKind {
        self.kind
    }

    /// The name, in canonical form, without its kind.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The names the subject alternative names extension of a certificate in DER carries.
    /// Names this module cannot take (other kinds, values that are not valid names) are left
    /// out, each on its own: the SAN is read entry by entry, so that one entry a stricter
    /// parser would refuse (an `x400Address`, a `dNSName` with a byte past ASCII, which webpki
    /// does not look into without name constraints) does not hide the others. A certificate
    /// with two SAN extensions (RFC 5280 §4.2 allows one) presents none.
    fn of_certificate(der: &[u8]) -> Vec<SubjectName> {
        use x509_cert::der::asn1::Any;
        use x509_cert::der::oid::AssociatedOid as _;
        use x509_cert::der::{Decode as _, Tag, Tagged as _};
        use x509_cert::ext::pkix::SubjectAltName;
        let Ok(cert) = x509_cert::Certificate::from_der(der) else {
            return Vec::new();
        };
        let extensions = cert.tbs_certificate.extensions.unwrap_or_default();
        let mut sans = extensions
            .iter()
            .filter(|e| e.extn_id == SubjectAltName::OID);
        let (Some(san), None) = (sans.next(), sans.next()) else {
            return Vec::new();
        };
        // GeneralNames: a SEQUENCE of entries, each tagged with its kind (RFC 5280 §4.2.1.6).
        let Ok(entries) = Vec::<Any>::from_der(san.extn_value.as_bytes()) else {
            return Vec::new();
        };
        entries
            .iter()
            .filter_map(|entry| {
                let Tag::ContextSpecific {
                    constructed: false,
                    number,
                } = entry.tag()
                else {
                    return None;
                };
                let v = entry.value();
                match number.value() {
                    1 => SubjectName::new(NameKind::Email, std::str::from_utf8(v).ok()?).ok(),
                    2 => SubjectName::new(NameKind::Dns, std::str::from_utf8(v).ok()?).ok(),
                    6 => SubjectName::new(NameKind::Uri, std::str::from_utf8(v).ok()?).ok(),
                    7 => {
                        let ip = match v.len() {
                            4 => IpAddr::from(<[u8; 4]>::try_from(v).ok()?),
                            16 => IpAddr::from(<[u8; 16]>::try_from(v).ok()?),
                            _ => return None,
                        };
                        Some(SubjectName {
                            kind: NameKind::Ip,
                            value: ip.to_string(),
                        })
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// A name as stored (in the key database, or a key record's JSON): the name, if the text
    /// parses and is in the canonical form this release writes; otherwise (written by hand, or
    /// by a release with other forms) [`NameKind::Unreadable`], kept as it is and matching no
    /// certificate. The stored hash of a bound key covers the text as stored, so a name read
    /// into another form would fail its key as a forgery.
    pub(crate) fn stored(text: &str) -> Self {
        text.parse::<SubjectName>()
            .ok()
            .filter(|n| n.to_string() == text)
            .unwrap_or_else(|| SubjectName {
                kind: NameKind::Unreadable,
                value: text.to_string(),
            })
    }
}

impl FromStr for SubjectName {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bad = |why: &str| {
            KeyError::Invalid(format!(
                "'{s}' is not a subject name to bind a key to: {why} (written dns:<name>, \
                 uri:<uri>, ip:<address> or email:<address>)"
            ))
        };
        let Some((kind, value)) = s.split_once(':') else {
            return Err(bad("it has no kind"));
        };
        let Some(kind) = NameKind::WRITTEN
            .into_iter()
            .find(|k| k.prefix().is_some_and(|p| p.eq_ignore_ascii_case(kind)))
        else {
            return Err(bad(&format!("'{kind}' is not a kind of name")));
        };
        SubjectName::new(kind, value).map_err(|why| bad(&why))
    }
}

impl fmt::Display for SubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.prefix() {
            Some(kind) => write!(f, "{kind}:{}", self.value),
            None => f.write_str(&self.value),
        }
    }
}

impl fmt::Debug for SubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectName({self})")
    }
}

/// What a mutual TLS connection's client presented: its certificate's thumbprint and names.
/// Made once per connection, at the handshake, and shared by its requests.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity(Arc<Presented>);

#[derive(PartialEq, Eq)]
struct Presented {
    certificate: ClientCertificate,
    names: Vec<SubjectName>,
}

impl ClientIdentity {
    /// The identity of a client certificate in DER (the leaf of the chain the client sent). A
    /// certificate that does not parse presents no names; one entry of its SAN that does not
    /// is left out (see [`SubjectName`]'s reading of certificates); a key bound to a name is
    /// then refused, never admitted.
    pub fn of_der(der: &[u8]) -> Self {
        ClientIdentity(Arc::new(Presented {
            certificate: ClientCertificate::of_der(der),
            names: SubjectName::of_certificate(der),
        }))
    }

    /// The identity of the first certificate in PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        Ok(Self::of_der(&first_certificate(pem)?))
    }

    /// The certificate's thumbprint.
    pub fn certificate(&self) -> &ClientCertificate {
        &self.0.certificate
    }

    /// The subject alternative names it carries that a key can be bound to.
    pub fn names(&self) -> &[SubjectName] {
        &self.0.names
    }

    /// Whether it is the certificate `c`.
    pub fn is(&self, c: &ClientCertificate) -> bool {
        self.certificate() == c
    }

    /// Whether its certificate carries the name `n`.
    pub fn carries(&self, n: &SubjectName) -> bool {
        self.names().contains(n)
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificate", &self.0.certificate)
            .field("names", &self.0.names)
            .finish()
    }
}

/// What a key is bound to: it is valid only on a mutual TLS connection whose client
/// certificate is this one, or carries this name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientBinding {
    /// One certificate, by thumbprint (RFC 8705 §3: the `x5t#S256` confirmation).
    Certificate(ClientCertificate),
    /// Any certificate the client CA vouches for that carries this subject alternative name
    /// (RFC 8705 §2.1.2).
    Name(SubjectName),
}

impl ClientBinding {
    /// The binding asked for with a certificate, a name, or neither (`None`: unbound); a key is
    /// bound to one or the other, so both at once is refused.
    pub fn one_of(
        certificate: Option<ClientCertificate>,
        name: Option<SubjectName>,
    ) -> Result<Option<Self>, KeyError> {
        match (certificate, name) {
            (Some(_), Some(_)) => Err(KeyError::Invalid(
                "a key is bound to a certificate (client_cert_sha256, --client-cert) or to a \
                 name (client_san, --client-san), not both"
                    .into(),
            )),
            (Some(c), None) => Ok(Some(ClientBinding::Certificate(c))),
            (None, Some(n)) => Ok(Some(ClientBinding::Name(n))),
            (None, None) => Ok(None),
        }
    }

    /// Whether a connection that presented `client` (`None`: no certificate) may use a key
    /// bound so.
    pub fn admits(&self, client: Option<&ClientIdentity>) -> bool {
        client.is_some_and(|client| match self {
            ClientBinding::Certificate(c) => client.is(c),
            ClientBinding::Name(n) => client.carries(n),
        })
    }
}

impl fmt::Display for ClientBinding {
    /// As the audit log's entries of key changes name it: `--client-cert sha256:<hex>` (the
    /// certificate's thumbprint, where the command took its file) or `--client-san <name>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientBinding::Certificate(c) => write!(f, "--client-cert sha256:{c}"),
            ClientBinding::Name(n) => write!(f, "--client-san {n}"),
        }
    }
}

/// The property the `client_identity` fuzz target checks: any bytes, read as a certificate,
/// give an identity without a panic, and every name it presents is in canonical form (its text
/// parses back to itself); any text that parses as a name prints as text that parses back to
/// the same name.
pub fn fuzz_property(data: &[u8]) {
    let id = ClientIdentity::of_der(data);
    for n in id.names() {
        assert_eq!(n.to_string().parse::<SubjectName>().ok().as_ref(), Some(n));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(n) = text.parse::<SubjectName>()
    {
        assert_eq!(n.to_string().parse::<SubjectName>().ok(), Some(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Result<SubjectName, KeyError> {
        s.parse()
    }

    #[test]
    fn names_parse_to_their_canonical_form() {
        for (given, canonical) in [
            ("dns:Scorer.Prod.Example.ORG", "dns:scorer.prod.example.org"),
            ("dns:scorer.example.org.", "dns:scorer.example.org"),
            ("DNS:a_b.internal", "dns:a_b.internal"),
            (
                "uri:spiffe://example.org/ns/prod/sa/Scorer",
                "uri:spiffe://example.org/ns/prod/sa/Scorer",
            ),
            ("ip:10.0.0.7", "ip:10.0.0.7"),
            ("ip:fd00:0:0::7", "ip:fd00::7"),
            ("email:CI@Example.ORG", "email:CI@example.org"),
            ("email:CI@Example.ORG.", "email:CI@example.org"),
        ] {
            assert_eq!(name(given).unwrap().to_string(), canonical, "{given}");
        }
    }

    #[test]
    fn what_is_not_a_name_is_refused_and_says_why() {
        for (given, why) in [
            ("scorer.example.org", "no kind"),
            ("host:scorer", "not a kind of name"),
            ("dns:", "empty"),
            ("dns:*.example.org", "wildcard"),
            ("dns:a..b", "not a DNS name"),
            ("dns:-", "not a DNS name"),
            ("uri:/no/scheme", "not a URI"),
            ("uri:spiffe://example.org/a b", "printable ASCII"),
            ("ip:10.0.0.256", "not an IP address"),
            ("email:nobody", "not an e-mail"),
            ("email:a@b@c", "not an e-mail"),
            ("email:a@*.example.org", "wildcard"),
            ("email:a@", "domain"),
            ("dns:caf\u{e9}.example", "printable ASCII"),
        ] {
            let e = name(given).unwrap_err().to_string();
            assert!(e.contains(why), "{given}: {e}");
        }
        let long = format!("uri:x:{}", "a".repeat(MAX_NAME));
        assert!(name(&long).unwrap_err().to_string().contains("longer"));
    }

    fn cert_with(names: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = names;
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_presents_its_names_in_canonical_form_and_its_thumbprint() {
        use rcgen::SanType;
        let der = cert_with(vec![
            SanType::DnsName("Scorer.Example.org".try_into().unwrap()),
            SanType::URI("spiffe://example.org/scorer".try_into().unwrap()),
            SanType::IpAddress("fd00::7".parse().unwrap()),
            SanType::IpAddress("10.0.0.7".parse().unwrap()),
            SanType::Rfc822Name("ci@EXAMPLE.org".try_into().unwrap()),
            // Not a name any binding can take: left out.
            SanType::DnsName("*.example.org".try_into().unwrap()),
        ]);
        let id = ClientIdentity::of_der(&der);
        let shown: Vec<String> = id.names().iter().map(|n| n.to_string()).collect();
        assert_eq!(
            shown,
            [
                "dns:scorer.example.org",
                "uri:spiffe://example.org/scorer",
                "ip:fd00::7",
                "ip:10.0.0.7",
                "email:ci@example.org"
            ]
        );
        assert_eq!(*id.certificate(), ClientCertificate::of_der(&der));
        for n in &shown {
            assert!(
                ClientBinding::Name(n.parse().unwrap()).admits(Some(&id)),
                "{n}"
            );
        }
        assert!(!ClientBinding::Name(name("dns:other.example.org").unwrap()).admits(Some(&id)));
        assert!(!ClientBinding::Name(name("dns:scorer.example.org").unwrap()).admits(None));
        assert!(ClientBinding::Certificate(ClientCertificate::of_der(&der)).admits(Some(&id)));
    }

    #[test]
    fn a_name_of_one_kind_does_not_match_the_same_text_of_another() {
        use rcgen::SanType;
        let id = ClientIdentity::of_der(&cert_with(vec![SanType::DnsName(
            "scorer".try_into().unwrap(),
        )]));
        assert!(ClientBinding::Name(name("dns:scorer").unwrap()).admits(Some(&id)));
        assert!(!ClientBinding::Name(name("uri:scorer:x").unwrap()).admits(Some(&id)));
        assert!(!ClientBinding::Name(name("email:scorer@x").unwrap()).admits(Some(&id)));
    }

    #[test]
    fn the_fuzz_property_holds_for_certificates_and_names_here() {
        use rcgen::SanType;
        fuzz_property(&cert_with(vec![
            SanType::DnsName("A.example".try_into().unwrap()),
            SanType::IpAddress("::ffff:10.0.0.1".parse().unwrap()),
        ]));
        for text in [
            "dns:A.example.",
            "ip:0:0::1",
            "email:x@Y",
            "uri:s:x",
            "ip:1.2.3",
        ] {
            fuzz_property(text.as_bytes());
        }
    }

    /// The DER of a subjectAltName extension's value: a SEQUENCE of GeneralNames, each given
    /// as its (context-specific) tag and contents (short forms only).
    fn san_der(names: &[(u8, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (tag, v) in names {
            body.push(*tag);
            body.push(v.len() as u8);
            body.extend_from_slice(v);
        }
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    }

    /// A self-signed certificate whose subjectAltName extensions are exactly `exts` (rcgen adds
    /// none of its own when `subject_alt_names` is empty).
    fn cert_with_raw_sans(exts: &[Vec<u8>]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::default();
        for e in exts {
            p.custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    &[2, 5, 29, 17],
                    e.clone(),
                ));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    /// RFC 5280 §4.2: a certificate MUST NOT include more than one instance of an extension
    /// (webpki refuses such a certificate, `ExtensionValueInvalid`). `of_certificate` reads
    /// every SAN extension and presents the names of all of them, so what `keys identity`
    /// shows, and what a binding is checked against, is a set of names no verifier vouched for.
    #[test]
    fn a_certificate_with_two_san_extensions_presents_no_names() {
        let uri = |s: &str| san_der(&[(0x86, s.as_bytes())]);
        let der = cert_with_raw_sans(&[
            uri("spiffe://example.org/ns/prod/sa/alice"),
            uri("spiffe://example.org/ns/prod/sa/admin"),
        ]);
        let id = ClientIdentity::of_der(&der);
        assert!(
            id.names().is_empty(),
            "a certificate with two SAN extensions presented {:?}",
            id.names()
        );
    }

    /// `of_der` says a certificate rustls took always has extensions x509-cert can read. Not
    /// so: webpki does not look inside SAN entries of a client certificate (without name
    /// constraints), but x509-cert refuses the whole extension for one entry it cannot decode
    /// (an x400Address, which it has no variant for; a dNSName with a byte over 0x7F), and the
    /// certificate then presents none of its names, its SPIFFE ID included.
    #[test]
    fn one_entry_x509_cert_cannot_decode_does_not_hide_the_other_names() {
        let spiffe: &[u8] = b"spiffe://example.org/ns/prod/sa/scorer";
        for (what, other) in [
            ("x400Address", (0xa3u8, &[0x30u8, 0x00][..])),
            (
                "non-ASCII dNSName",
                (0x82u8, "caf\u{e9}.example".as_bytes()),
            ),
        ] {
            let der = cert_with_raw_sans(&[san_der(&[(0x86, spiffe), other])]);
            let shown: Vec<String> = ClientIdentity::of_der(&der)
                .names()
                .iter()
                .map(|n| n.to_string())
                .collect();
            assert_eq!(
                shown,
                ["uri:spiffe://example.org/ns/prod/sa/scorer"],
                "with an {what} beside it"
            );
        }
    }

    #[test]
    fn bytes_that_are_not_a_certificate_present_no_names() {
        let id = ClientIdentity::of_der(b"not a certificate");
        assert!(id.names().is_empty());
        assert_eq!(
            *id.certificate(),
            ClientCertificate::of_der(b"not a certificate")
        );
    }

    fn tlv(tag: u8, v: &[u8]) -> Vec<u8> {
        assert!(v.len() < 128);
        let mut o = vec![tag, v.len() as u8];
        o.extend_from_slice(v);
        o
    }

    fn shown_of(der: &[u8]) -> Vec<String> {
        ClientIdentity::of_der(der)
            .names()
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    /// No entry but a primitive [1], [2], [6] or [7] presents a name; what hides inside
    /// an OtherName, a directoryName's CN, an explicitly tagged (constructed) [2] or [6], an
    /// IP with a mask, is not read.
    #[test]
    fn tag_confusions_present_nothing() {
        let dns = b"admin.example.org";
        let uri = b"spiffe://example.org/ns/prod/sa/admin";
        let mut other = tlv(0x06, &[0x2a, 0x03, 0x04]);
        other.extend(tlv(0xa0, &tlv(0x86, uri)));
        let mut cn = tlv(0x06, &[0x55, 0x04, 0x03]);
        cn.extend(tlv(0x0c, dns));
        let dir_name = tlv(0xa4, &tlv(0x30, &tlv(0x31, &tlv(0x30, &cn))));
        for (what, entry) in [
            (
                "constructed [2] (explicit IA5String)",
                tlv(0xa2, &tlv(0x16, dns)),
            ),
            (
                "constructed [6] (explicit IA5String)",
                tlv(0xa6, &tlv(0x16, uri)),
            ),
            ("OtherName holding a [6]", tlv(0xa0, &other)),
            ("directoryName with CN", dir_name),
            ("x400Address holding a [2]", tlv(0xa3, &tlv(0x82, dns))),
            ("ediPartyName holding a [2]", tlv(0xa5, &tlv(0x82, dns))),
            ("registeredID", tlv(0x88, &[0x2a, 0x03])),
            (
                "iPAddress with mask",
                tlv(0x87, &[10, 0, 0, 7, 255, 255, 255, 255]),
            ),
            ("application [2]", tlv(0x42, dns)),
            ("private [2]", tlv(0xc2, dns)),
            ("universal IA5String", tlv(0x16, dns)),
        ] {
            let der = cert_with_raw_sans(&[tlv(0x30, &entry)]);
            assert!(shown_of(&der).is_empty(), "{what}: {:?}", shown_of(&der));
        }
        // High-tag-number form of [2], and a non-minimal length: the SAN is refused as a whole.
        let mut high = vec![0x30, 2 + 2 + dns.len() as u8, 0x9f, 0x02, dns.len() as u8];
        high.extend_from_slice(dns);
        assert!(shown_of(&cert_with_raw_sans(&[high])).is_empty());
        let mut long = vec![0x30, 3 + dns.len() as u8, 0x82, 0x81, dns.len() as u8];
        long.extend_from_slice(dns);
        assert!(shown_of(&cert_with_raw_sans(&[long])).is_empty());
    }

    /// A critical SAN reads as a non-critical one; a SAN-shaped value under another
    /// OID (issuerAltName, or a private one) or nested in another extension presents nothing.
    #[test]
    fn san_elsewhere_or_critical() {
        let san = tlv(0x30, &tlv(0x82, b"admin.example.org"));
        let mut p = rcgen::CertificateParams::default();
        let mut e = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 17], san.clone());
        e.set_criticality(true);
        p.custom_extensions.push(e);
        let key = rcgen::KeyPair::generate().unwrap();
        let der = p.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(shown_of(&der), ["dns:admin.example.org"]);

        let mut whole_ext = tlv(0x06, &[0x55, 0x1d, 0x11]);
        whole_ext.extend(tlv(0x04, &san));
        for (oid, content) in [
            (&[2u64, 5, 29, 18][..], san.clone()),
            (&[1, 3, 6, 1, 4, 1, 99999, 1][..], tlv(0x30, &whole_ext)),
        ] {
            let mut p = rcgen::CertificateParams::default();
            p.custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(oid, content));
            let der = p.self_signed(&key).unwrap().der().to_vec();
            assert!(shown_of(&der).is_empty(), "{oid:?}");
        }
    }

    /// 2.5.29.17 with a non-minimal arc (55 1d 80 11, which webpki treats as an unknown
    /// extension) is not read as the SAN, and does not count as a second one either.
    #[test]
    fn non_minimal_san_oid_is_not_the_san() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        // 2.5.29.145 encodes as 55 1d 81 11: patched to 55 1d 80 11 (the same length).
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 145],
                tlv(0x30, &tlv(0x82, b"admin.example.org")),
            ));
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                tlv(0x30, &tlv(0x82, b"scorer.example.org")),
            ));
        let mut der = p.self_signed(&key).unwrap().der().to_vec();
        let at = der
            .windows(5)
            .position(|w| w == [0x06, 0x04, 0x55, 0x1d, 0x81])
            .unwrap();
        der[at + 4] = 0x80;
        assert_eq!(shown_of(&der), ["dns:scorer.example.org"]);
    }
}

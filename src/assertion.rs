//! Client assertions for `private_key_jwt` client authentication (RFC 7523 section 2.2, OIDC
//! Core section 9): the client's signing key, parsed once from a PEM or a private JWK, and the
//! short-lived JWT it signs for each token-endpoint request. ES256 (P-256) and RS256 (RSA of
//! 2048 to 4096 bits) only, with the RustCrypto `p256` and `rsa` crates. Errors name what is
//! wrong, never key material; `Debug` of a key prints `[redacted]`.

use crate::util::{b64url, b64url_decode, random_token, sha256, Random};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{self, DecodePrivateKey};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Map, Value};

/// Longest key spec accepted (an RSA-4096 PKCS#8 PEM is about 3.3 KB).
pub const MAX_KEY_SPEC: usize = 16 * 1024;
/// Longest `kid`.
pub const MAX_KID_LEN: usize = 128;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (signing cost grows with its cube).
pub const MAX_RSA_BITS: usize = 4096;
/// Lifetime of an assertion, in seconds (`exp` - `iat`): it is signed right before the request
/// that carries it.
pub const LIFETIME: u64 = 60;
/// Random bytes in `jti` (128 bits).
pub const JTI_BYTES: usize = 16;
/// The token request's `client_assertion_type` that goes with `client_assertion`.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Why a client key was refused. Never carries key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssertionError {
    /// Longer than [`MAX_KEY_SPEC`].
    TooLong,
    /// Neither a PEM nor a JSON object.
    NotAKey,
    /// An encrypted PEM.
    Encrypted,
    /// A public key or certificate only.
    PublicOnly,
    /// A key type, curve or algorithm other than ES256 (P-256) and RS256.
    Unsupported(&'static str),
    /// An RSA modulus of this many bits, outside 2048..=4096.
    RsaSize(usize),
    /// A malformed or inconsistent key; what is wrong.
    Invalid(&'static str),
    /// A bad `kid`; what is wrong.
    Kid(&'static str),
    /// The JWK's `kid` differs from the one given.
    KidMismatch,
}

impl std::fmt::Display for AssertionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssertionError::TooLong => {
                write!(f, "not a PEM or JWK private key (longer than {MAX_KEY_SPEC} bytes)")
            }
            AssertionError::NotAKey => f.write_str("not a PEM or JWK private key"),
            AssertionError::Encrypted => f.write_str(
                "an encrypted PEM private key: give it unencrypted (the environment variable is the secret)",
            ),
            AssertionError::PublicOnly => {
                f.write_str("a public key or certificate: the private key is needed")
            }
            AssertionError::Unsupported(what) => {
                write!(f, "{what}: only EC P-256 (ES256) and RSA (RS256) keys")
            }
            AssertionError::RsaSize(bits) => write!(
                f,
                "an RSA key of {bits} bits: must be {MIN_RSA_BITS} to {MAX_RSA_BITS}"
            ),
            AssertionError::Invalid(what) => write!(f, "not a usable private key: {what}"),
            AssertionError::Kid(what) => write!(f, "kid: {what}"),
            AssertionError::KidMismatch => {
                f.write_str("the JWK's `kid` differs from the one configured")
            }
        }
    }
}

impl std::error::Error for AssertionError {}

/// The client's signing key and its `kid`.
#[derive(Clone)]
pub struct ClientKey {
    kid: Option<String>,
    key: Inner,
}

#[derive(Clone)]
enum Inner {
    Es256(p256::ecdsa::SigningKey),
    Rs256(Box<rsa::RsaPrivateKey>),
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl ClientKey {
    /// Parses a private key: a PEM (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY`, PKCS#1
    /// `RSA PRIVATE KEY`; other blocks such as `EC PARAMETERS` are skipped) or a private JWK
    /// (`kty` EC with `crv` P-256, `d`, `x`, `y`; or `kty` RSA with `n`, `e`, `d`, `p`, `q`, where
    /// `dp`, `dq`, `qi` are recomputed and `oth` is refused). An environment value written on one
    /// line with `\n` escapes is read as the PEM it stands for. The `kid` is the JWK's or the
    /// given one (both: they must agree); with neither, assertions carry no `kid`.
    pub fn parse(spec: &str, kid: Option<&str>) -> Result<ClientKey, AssertionError> {
        if spec.len() > MAX_KEY_SPEC {
            return Err(AssertionError::TooLong);
        }
        if let Some(k) = kid {
            valid_kid(k)?;
        }
        let spec = spec.trim();
        let (key, own_kid) = if spec.starts_with('{') {
            jwk(spec)?
        } else if spec.contains("-----BEGIN ") {
            let unescaped;
            let text = if !spec.contains('\n') && spec.contains("\\n") {
                unescaped = spec.replace("\\n", "\n");
                unescaped.as_str()
            } else {
                spec
            };
            (pem(text)?, None)
        } else {
            return Err(AssertionError::NotAKey);
        };
        let kid = match (own_kid, kid) {
            (Some(a), Some(b)) if a != b => return Err(AssertionError::KidMismatch),
            (Some(a), _) => Some(a),
            (None, b) => b.map(str::to_string),
        };
        if let Inner::Rs256(k) = &key {
            rsa_pairwise_check(k)?;
        }
        Ok(ClientKey { kid, key })
    }

    /// `ES256` or `RS256`.
    pub fn alg(&self) -> &'static str {
        match self.key {
            Inner::Es256(_) => "ES256",
            Inner::Rs256(_) => "RS256",
        }
    }

    /// The key id put in the assertion's header, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The public half as a JWK (`use` sig, `alg`, `kid` if any): what the provider must know
    /// the client by (its registered `jwks` or `jwks_uri`).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.key {
            Inner::Es256(sk) => {
                let p = sk.verifying_key().to_encoded_point(false);
                let coord = |c: Option<&p256::FieldBytes>| c.map(|c| b64url(c)).unwrap_or_default();
                json!({"kty": "EC", "crv": "P-256", "x": coord(p.x()), "y": coord(p.y())})
            }
            Inner::Rs256(k) => json!({
                "kty": "RSA",
                "n": b64url(&k.n().to_bytes_be()),
                "e": b64url(&k.e().to_bytes_be()),
            }),
        };
        if let Some(o) = jwk.as_object_mut() {
            o.insert("use".into(), "sig".into());
            o.insert("alg".into(), self.alg().into());
            if let Some(kid) = &self.kid {
                o.insert("kid".into(), kid.as_str().into());
            }
        }
        jwk
    }
}

/// A signed client assertion (compact JWS) for the token endpoint's `client_assertion`, with
/// `client_assertion_type` `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`:
/// header `alg`, `kid` (when known), `typ` JWT; claims `iss` = `sub` = `client_id`, `aud` =
/// `audience` (the token endpoint URL, or the issuer for providers that ask for it), a random
/// `jti` of [`JTI_BYTES`] bytes, `iat` = `now`, `exp` = `now` + [`LIFETIME`]. No `nbf`: a
/// provider whose clock is a second behind would refuse it, and `iat`/`exp` bound it already.
/// ES256 signs with RFC 6979 nonces and gives the JOSE `r || s` (64 bytes); RS256 is PKCS#1
/// v1.5 over SHA-256, blinded with `rng`. The same key, arguments and `rng` give the same JWS.
pub fn client_assertion(
    key: &ClientKey,
    client_id: &str,
    audience: &str,
    now: u64,
    rng: &mut dyn Random,
) -> String {
    let jti = random_token(rng, JTI_BYTES);
    let mut header = json!({"alg": key.alg(), "typ": "JWT"});
    if let (Some(kid), Some(h)) = (&key.kid, header.as_object_mut()) {
        h.insert("kid".into(), kid.as_str().into());
    }
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": jti,
        "iat": now,
        "exp": now.saturating_add(LIFETIME),
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = match &key.key {
        Inner::Es256(sk) => {
            use p256::ecdsa::signature::Signer;
            let s: p256::ecdsa::Signature = sk.sign(input.as_bytes());
            s.to_bytes().to_vec()
        }
        // A key that `parse` accepted has signed once already; should this ever fail, the
        // empty signature is refused by the provider like any bad assertion.
        Inner::Rs256(k) => k
            .sign_with_rng(
                &mut HostRng(rng),
                rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                &sha256(input.as_bytes()),
            )
            .unwrap_or_default(),
    };
    format!("{input}.{}", b64url(&sig))
}

/// The injected randomness as the `rand_core` generator the `rsa` crate blinds with.
struct HostRng<'a>(&'a mut dyn Random);

impl rsa::rand_core::RngCore for HostRng<'_> {
    fn next_u32(&mut self) -> u32 {
        rsa::rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rsa::rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

// The host's `Random` is its CSPRNG (WASI `random_get`).
impl rsa::rand_core::CryptoRng for HostRng<'_> {}

/// Whether `kid` can be an assertion's `kid`: 1 to [`MAX_KID_LEN`] printable ASCII characters.
pub fn valid_kid(kid: &str) -> Result<(), AssertionError> {
    if kid.is_empty() || kid.len() > MAX_KID_LEN {
        return Err(AssertionError::Kid("must be 1 to 128 characters"));
    }
    if !kid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AssertionError::Kid(
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

fn rsa_size(k: &rsa::RsaPrivateKey) -> Result<(), AssertionError> {
    let bits = k.n().bits();
    if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(AssertionError::RsaSize(bits))
    }
}

/// Signs and verifies once (a pairwise consistency check), so a key accepted here signs.
fn rsa_pairwise_check(k: &rsa::RsaPrivateKey) -> Result<(), AssertionError> {
    let scheme = || rsa::Pkcs1v15Sign::new::<sha2::Sha256>();
    let digest = sha256(b"bffgate client key check");
    let bad = AssertionError::Invalid("the RSA key does not sign verifiably");
    let sig = k.sign(scheme(), &digest).map_err(|_| bad)?;
    k.to_public_key()
        .verify(scheme(), &digest, &sig)
        .map_err(|_| bad)
}

fn es256(sk: p256::SecretKey) -> Inner {
    Inner::Es256(p256::ecdsa::SigningKey::from(sk))
}

fn rs256(k: rsa::RsaPrivateKey) -> Result<Inner, AssertionError> {
    rsa_size(&k)?;
    Ok(Inner::Rs256(Box::new(k)))
}

/// The PEM blocks of `text`: `(label, block from its BEGIN line to its END line)`.
fn pem_blocks(text: &str) -> Vec<(&str, &str)> {
    fn next(rest: &str) -> Option<(&str, &str, &str)> {
        const BEGIN: &str = "-----BEGIN ";
        let from = rest.get(rest.find(BEGIN)?..)?;
        let after = from.get(BEGIN.len()..)?;
        let label = after.get(..after.find("-----")?)?;
        let end = format!("-----END {label}-----");
        let len = from.find(&end)? + end.len();
        Some((label, from.get(..len)?, from.get(len..)?))
    }
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((label, block, tail)) = next(rest) {
        out.push((label, block));
        rest = tail;
    }
    out
}

fn pem(text: &str) -> Result<Inner, AssertionError> {
    let blocks = pem_blocks(text);
    let private: Vec<&(&str, &str)> = blocks
        .iter()
        .filter(|(label, _)| label.ends_with("PRIVATE KEY"))
        .collect();
    let (label, block) = match private.as_slice() {
        [] if blocks
            .iter()
            .any(|(l, _)| l.contains("PUBLIC KEY") || l.contains("CERTIFICATE")) =>
        {
            return Err(AssertionError::PublicOnly)
        }
        [] => return Err(AssertionError::NotAKey),
        [one] => **one,
        _ => {
            return Err(AssertionError::Invalid(
                "more than one private key in the PEM",
            ))
        }
    };
    // RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`) mark a legacy encrypted PKCS#1 or SEC1 key.
    if label == "ENCRYPTED PRIVATE KEY" || block.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(AssertionError::Encrypted);
    }
    match label {
        "PRIVATE KEY" => pkcs8_key(block),
        "EC PRIVATE KEY" => p256::SecretKey::from_sec1_pem(block)
            .map(es256)
            .map_err(|_| AssertionError::Invalid("a malformed SEC1 key, or not on P-256")),
        "RSA PRIVATE KEY" => rsa::RsaPrivateKey::from_pkcs1_pem(block)
            .map_err(|_| AssertionError::Invalid("a malformed or inconsistent PKCS#1 RSA key"))
            .and_then(rs256),
        _ => Err(AssertionError::Unsupported("this kind of PEM private key")),
    }
}

fn pkcs8_key(block: &str) -> Result<Inner, AssertionError> {
    let malformed = AssertionError::Invalid("a malformed PKCS#8 key");
    let (_, doc) = pkcs8::SecretDocument::from_pem(block).map_err(|_| malformed)?;
    let info: pkcs8::PrivateKeyInfo<'_> = doc.decode_msg().map_err(|_| malformed)?;
    if info.algorithm.oid == p256::elliptic_curve::ALGORITHM_OID {
        let on_p256 = info
            .algorithm
            .parameters_oid()
            .is_ok_and(|c| c == <p256::NistP256 as pkcs8::AssociatedOid>::OID);
        if !on_p256 {
            return Err(AssertionError::Unsupported(
                "an EC key on another curve than P-256",
            ));
        }
        p256::SecretKey::from_pkcs8_der(doc.as_bytes())
            .map(es256)
            .map_err(|_| AssertionError::Invalid("a malformed or inconsistent P-256 key"))
    } else if info.algorithm.oid == rsa::pkcs1::ALGORITHM_OID {
        rsa::RsaPrivateKey::from_pkcs8_der(doc.as_bytes())
            .map_err(|_| AssertionError::Invalid("a malformed or inconsistent RSA key"))
            .and_then(rs256)
    } else {
        Err(AssertionError::Unsupported("this PKCS#8 key type"))
    }
}

/// A base64url member of a JWK (`None` when absent; an error when present but not base64url).
fn member(o: &Map<String, Value>, name: &'static str) -> Result<Option<Vec<u8>>, AssertionError> {
    match o.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(b64url_decode)
            .map(Some)
            .ok_or(AssertionError::Invalid("a JWK member is not base64url")),
    }
}

fn required(
    o: &Map<String, Value>,
    name: &'static str,
    missing: &'static str,
) -> Result<Vec<u8>, AssertionError> {
    member(o, name)?.ok_or(AssertionError::Invalid(missing))
}

fn jwk(text: &str) -> Result<(Inner, Option<String>), AssertionError> {
    let o: Map<String, Value> =
        serde_json::from_str(text).map_err(|_| AssertionError::Invalid("not a JSON object"))?;
    if o.get("use").is_some_and(|u| u != "sig") {
        return Err(AssertionError::Invalid("the JWK's `use` is not `sig`"));
    }
    let kid = match o.get("kid") {
        None => None,
        Some(Value::String(k)) => {
            valid_kid(k)?;
            Some(k.clone())
        }
        Some(_) => return Err(AssertionError::Kid("the JWK's `kid` is not a string")),
    };
    let alg = o.get("alg");
    let key = match o.get("kty").and_then(Value::as_str) {
        Some("EC") => {
            if o.get("crv").and_then(Value::as_str) != Some("P-256") {
                return Err(AssertionError::Unsupported(
                    "an EC JWK on another curve than P-256",
                ));
            }
            if alg.is_some_and(|a| a != "ES256") {
                return Err(AssertionError::Unsupported(
                    "an EC JWK whose `alg` is not ES256",
                ));
            }
            if !o.contains_key("d") {
                return Err(AssertionError::PublicOnly);
            }
            ec_jwk(&o)?
        }
        Some("RSA") => {
            if alg.is_some_and(|a| a != "RS256") {
                return Err(AssertionError::Unsupported(
                    "an RSA JWK whose `alg` is not RS256",
                ));
            }
            if !o.contains_key("d") {
                return Err(AssertionError::PublicOnly);
            }
            if o.contains_key("oth") {
                return Err(AssertionError::Unsupported("a multi-prime RSA JWK (`oth`)"));
            }
            rsa_jwk(&o)?
        }
        Some(_) => return Err(AssertionError::Unsupported("this JWK `kty`")),
        None => return Err(AssertionError::Invalid("a JWK without `kty`")),
    };
    Ok((key, kid))
}

fn ec_jwk(o: &Map<String, Value>) -> Result<Inner, AssertionError> {
    let d = required(o, "d", "an EC JWK without `d`")?;
    let x = required(o, "x", "an EC JWK without `x`")?;
    let y = required(o, "y", "an EC JWK without `y`")?;
    if d.len() != 32 || x.len() != 32 || y.len() != 32 {
        return Err(AssertionError::Invalid(
            "`d`, `x` and `y` of a P-256 JWK are 32 bytes each",
        ));
    }
    let sk = p256::SecretKey::from_slice(&d)
        .map_err(|_| AssertionError::Invalid("`d` is not a P-256 private scalar"))?;
    let p = sk.public_key().to_encoded_point(false);
    if p.x().map(|c| c.as_slice()) != Some(x.as_slice())
        || p.y().map(|c| c.as_slice()) != Some(y.as_slice())
    {
        return Err(AssertionError::Invalid(
            "`x` and `y` are not the public key of `d`",
        ));
    }
    Ok(es256(sk))
}

fn rsa_jwk(o: &Map<String, Value>) -> Result<Inner, AssertionError> {
    let big = |name: &'static str, missing: &'static str| {
        required(o, name, missing).map(|b| rsa::BigUint::from_bytes_be(&b))
    };
    let n = big("n", "an RSA JWK without `n`")?;
    let bits = n.bits();
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(AssertionError::RsaSize(bits));
    }
    let e = big("e", "an RSA JWK without `e`")?;
    let d = big("d", "an RSA JWK without `d`")?;
    let p = big("p", "an RSA JWK without `p` (the primes are needed)")?;
    let q = big("q", "an RSA JWK without `q` (the primes are needed)")?;
    for name in ["dp", "dq", "qi"] {
        member(o, name)?;
    }
    rsa::RsaPrivateKey::from_components(n, e, d, vec![p, q])
        .map_err(|_| AssertionError::Invalid("the RSA JWK's members are inconsistent"))
        .and_then(rs256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestRandom;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PrivateKeyParts;

    // Keys generated by `openssl genpkey` for these tests only; they protect nothing.
    const P256: &str = include_str!("../tests/data/test-only-p256.pem");
    const RSA2048: &str = include_str!("../tests/data/test-only-rsa2048.pem");
    const RSA1024: &str = include_str!("../tests/data/test-only-rsa1024.pem");
    const P384: &str = include_str!("../tests/data/test-only-p384.pem");
    const ED25519: &str = include_str!("../tests/data/test-only-ed25519.pem");

    const CLIENT: &str = "bff-client";
    const TOKEN_ENDPOINT: &str = "https://idp.example/token";

    fn rsa_key() -> rsa::RsaPrivateKey {
        rsa::RsaPrivateKey::from_pkcs8_pem(RSA2048).unwrap()
    }

    fn ec_key() -> p256::SecretKey {
        p256::SecretKey::from_pkcs8_pem(P256).unwrap()
    }

    fn ec_jwk() -> Map<String, Value> {
        let sk = ec_key();
        let p = sk.public_key().to_encoded_point(false);
        let v = json!({"kty": "EC", "crv": "P-256", "d": b64url(&sk.to_bytes()),
                       "x": b64url(p.x().unwrap()), "y": b64url(p.y().unwrap())});
        v.as_object().unwrap().clone()
    }

    fn rsa_jwk() -> Map<String, Value> {
        let k = rsa_key();
        let b = |n: &rsa::BigUint| b64url(&n.to_bytes_be());
        let v = json!({"kty": "RSA", "n": b(k.n()), "e": b(k.e()), "d": b(k.d()),
                       "p": b(&k.primes()[0]), "q": b(&k.primes()[1])});
        v.as_object().unwrap().clone()
    }

    fn text(m: &Map<String, Value>) -> String {
        Value::Object(m.clone()).to_string()
    }

    /// Verifies with the key's own public JWK through the filter's JWS verifier; the header
    /// and claims.
    fn verify(key: &ClientKey, jws: &str) -> (Value, Map<String, Value>) {
        let set =
            crate::jose::parse_jwks(json!({"keys": [key.public_jwk()]}).to_string().as_bytes())
                .unwrap();
        assert_eq!(set.keys.len(), 1);
        let claims = crate::jose::verify(jws, &set).expect("the assertion verifies");
        let h = jws.split('.').next().unwrap();
        let header: Value = serde_json::from_slice(&b64url_decode(h).unwrap()).unwrap();
        (header, claims)
    }

    #[test]
    fn es256_assertion_verifies_and_carries_the_claims() {
        let key = ClientKey::parse(P256, Some("ec-1")).unwrap();
        assert_eq!(key.alg(), "ES256");
        let jws = client_assertion(
            &key,
            CLIENT,
            TOKEN_ENDPOINT,
            1_700_000_000,
            &mut TestRandom(1),
        );
        let (header, claims) = verify(&key, &jws);
        assert_eq!(header, json!({"alg": "ES256", "kid": "ec-1", "typ": "JWT"}));
        assert_eq!(claims["iss"], CLIENT);
        assert_eq!(claims["sub"], CLIENT);
        assert_eq!(claims["aud"], TOKEN_ENDPOINT);
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_000_060u64);
        assert_eq!(claims.len(), 6, "{claims:?}");
        let jti = b64url_decode(claims["jti"].as_str().unwrap()).unwrap();
        assert!(jti.len() * 8 >= 128);
        // JOSE ECDSA: raw r || s, and it verifies with the crate's own verifier too.
        let (input, sig) = jws.rsplit_once('.').unwrap();
        let sig = b64url_decode(sig).unwrap();
        assert_eq!(sig.len(), 64);
        use p256::ecdsa::signature::Verifier;
        let vk = p256::ecdsa::VerifyingKey::from(ec_key().public_key());
        let s = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        assert!(vk.verify(input.as_bytes(), &s).is_ok());
        assert!(vk.verify(b"something else", &s).is_err());
    }

    #[test]
    fn rs256_assertion_verifies_and_carries_the_claims() {
        let key = ClientKey::parse(RSA2048, Some("rsa-1")).unwrap();
        assert_eq!(key.alg(), "RS256");
        let jws = client_assertion(&key, CLIENT, "https://idp.example", 42, &mut TestRandom(2));
        let (header, claims) = verify(&key, &jws);
        assert_eq!(
            header,
            json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"})
        );
        assert_eq!(claims["iss"], CLIENT);
        assert_eq!(claims["sub"], CLIENT);
        assert_eq!(claims["aud"], "https://idp.example");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            LIFETIME
        );
        assert_eq!(LIFETIME, 60);
        let (input, sig) = jws.rsplit_once('.').unwrap();
        let sig = b64url_decode(sig).unwrap();
        assert_eq!(sig.len(), 256);
        // PKCS#1 v1.5 with SHA-256, checked by the crate's verifier directly.
        let pk = rsa_key().to_public_key();
        let scheme = rsa::Pkcs1v15Sign::new::<sha2::Sha256>();
        assert!(pk.verify(scheme, &sha256(input.as_bytes()), &sig).is_ok());
    }

    #[test]
    fn assertions_are_deterministic_for_a_fixed_rng_and_fresh_otherwise() {
        for spec in [P256, RSA2048] {
            let key = ClientKey::parse(spec, None).unwrap();
            let a = client_assertion(&key, CLIENT, TOKEN_ENDPOINT, 100, &mut TestRandom(7));
            let b = client_assertion(&key, CLIENT, TOKEN_ENDPOINT, 100, &mut TestRandom(7));
            assert_eq!(a, b);
            let mut rng = TestRandom(7);
            let c = client_assertion(&key, CLIENT, TOKEN_ENDPOINT, 100, &mut rng);
            let d = client_assertion(&key, CLIENT, TOKEN_ENDPOINT, 100, &mut rng);
            let (_, cc) = verify(&key, &c);
            let (hd, dc) = verify(&key, &d);
            assert_ne!(cc["jti"], dc["jti"]);
            assert_ne!(c, d);
            // No kid known: none in the header.
            assert_eq!(hd.get("kid"), None);
        }
    }

    #[test]
    fn claims_are_json_escaped() {
        let key = ClientKey::parse(P256, Some("k")).unwrap();
        let id = "odd\"client\\id";
        let jws = client_assertion(&key, id, TOKEN_ENDPOINT, 1, &mut TestRandom(3));
        let (_, claims) = verify(&key, &jws);
        assert_eq!(claims["iss"], id);
        assert_eq!(claims["sub"], id);
    }

    #[test]
    fn sec1_pkcs1_escaped_and_jwk_forms_give_the_same_keys() {
        let ec = ClientKey::parse(P256, None).unwrap().public_jwk();
        let rs = ClientKey::parse(RSA2048, None).unwrap().public_jwk();
        let sec1 = ec_key().to_sec1_pem(LineEnding::LF).unwrap();
        // `openssl ecparam -genkey` writes the curve's parameters before the key.
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            sec1.as_str()
        );
        let pkcs1 = rsa_key().to_pkcs1_pem(LineEnding::CRLF).unwrap();
        let one_line = P256.trim().replace('\n', "\\n");
        for (spec, want) in [
            (sec1.to_string(), &ec),
            (with_params, &ec),
            (one_line, &ec),
            (text(&ec_jwk()), &ec),
            (pkcs1.to_string(), &rs),
            (text(&rsa_jwk()), &rs),
        ] {
            let key = ClientKey::parse(&spec, None).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&key.public_jwk(), want);
            let jws = client_assertion(&key, CLIENT, TOKEN_ENDPOINT, 5, &mut TestRandom(9));
            verify(&key, &jws);
        }
        assert!(ec.get("d").is_none() && rs.get("d").is_none() && rs.get("p").is_none());
    }

    #[test]
    fn the_kid_comes_from_the_jwk_or_the_caller_and_they_must_agree() {
        let mut jwk = ec_jwk();
        jwk.insert("kid".into(), "from-jwk".into());
        jwk.insert("use".into(), "sig".into());
        jwk.insert("alg".into(), "ES256".into());
        let key = ClientKey::parse(&text(&jwk), None).unwrap();
        assert_eq!(key.kid(), Some("from-jwk"));
        assert_eq!(key.public_jwk()["kid"], "from-jwk");
        let key = ClientKey::parse(&text(&jwk), Some("from-jwk")).unwrap();
        assert_eq!(key.kid(), Some("from-jwk"));
        assert_eq!(
            ClientKey::parse(&text(&jwk), Some("other")).unwrap_err(),
            AssertionError::KidMismatch
        );
        assert_eq!(
            ClientKey::parse(P256, Some("given")).unwrap().kid(),
            Some("given")
        );
        for bad in ["", "has space", "tab\t", &"k".repeat(129)] {
            assert!(
                matches!(
                    ClientKey::parse(P256, Some(bad)),
                    Err(AssertionError::Kid(_))
                ),
                "{bad:?}"
            );
        }
        jwk.insert("kid".into(), 5.into());
        assert!(matches!(
            ClientKey::parse(&text(&jwk), None),
            Err(AssertionError::Kid(_))
        ));
    }

    /// Every key-like refusal, with the key material it must not echo.
    #[test]
    fn refusals_say_why_and_name_no_key_material() {
        use AssertionError as E;
        let rsa_public = rsa_key()
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let mut ec_public = ec_jwk();
        ec_public.remove("d");
        let mut ec_wrong_x = ec_jwk();
        let other = p256::SecretKey::from_slice(&[7u8; 32])
            .unwrap()
            .public_key();
        ec_wrong_x.insert(
            "x".into(),
            b64url(other.to_encoded_point(false).x().unwrap()).into(),
        );
        let mut ec_short_d = ec_jwk();
        ec_short_d.insert("d".into(), b64url(&[1u8; 31]).into());
        let mut ec_p384 = ec_jwk();
        ec_p384.insert("crv".into(), "P-384".into());
        let mut rsa_wrong_p = rsa_jwk();
        rsa_wrong_p.insert(
            "p".into(),
            b64url(&rsa_key().primes()[1].to_bytes_be()).into(),
        );
        let mut rsa_no_q = rsa_jwk();
        rsa_no_q.remove("q");
        let mut rsa_ps256 = rsa_jwk();
        rsa_ps256.insert("alg".into(), "PS256".into());
        let mut rsa_oth = rsa_jwk();
        rsa_oth.insert("oth".into(), json!([]));
        let mut rsa_enc = rsa_jwk();
        rsa_enc.insert("use".into(), "enc".into());
        let mut rsa_bad_d = rsa_jwk();
        rsa_bad_d.insert("d".into(), "not base64!".into());
        let encrypted = P256.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY");
        let legacy = sec1_with_header(
            "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n",
        );
        let two = format!("{P256}\n{RSA2048}");
        let cases: Vec<(String, E)> = vec![
            (String::new(), E::NotAKey),
            ("hunter2-not-a-key".into(), E::NotAKey),
            ("x".repeat(MAX_KEY_SPEC + 1), E::TooLong),
            (RSA1024.into(), E::RsaSize(1024)),
            (
                P384.into(),
                E::Unsupported("an EC key on another curve than P-256"),
            ),
            (ED25519.into(), E::Unsupported("this PKCS#8 key type")),
            (rsa_public.clone(), E::PublicOnly),
            (encrypted, E::Encrypted),
            (legacy, E::Encrypted),
            (two, E::Invalid("more than one private key in the PEM")),
            (
                P256.replace("MIG", "MIH"),
                E::Invalid("a malformed PKCS#8 key"),
            ),
            (text(&ec_public), E::PublicOnly),
            (
                text(&ec_wrong_x),
                E::Invalid("`x` and `y` are not the public key of `d`"),
            ),
            (
                text(&ec_short_d),
                E::Invalid("`d`, `x` and `y` of a P-256 JWK are 32 bytes each"),
            ),
            (
                text(&ec_p384),
                E::Unsupported("an EC JWK on another curve than P-256"),
            ),
            (
                text(&rsa_wrong_p),
                E::Invalid("the RSA JWK's members are inconsistent"),
            ),
            (
                text(&rsa_no_q),
                E::Invalid("an RSA JWK without `q` (the primes are needed)"),
            ),
            (
                text(&rsa_ps256),
                E::Unsupported("an RSA JWK whose `alg` is not RS256"),
            ),
            (
                text(&rsa_oth),
                E::Unsupported("a multi-prime RSA JWK (`oth`)"),
            ),
            (text(&rsa_enc), E::Invalid("the JWK's `use` is not `sig`")),
            (
                text(&rsa_bad_d),
                E::Invalid("a JWK member is not base64url"),
            ),
            (
                r#"{"kty":"oct","k":"c2VjcmV0c2VjcmV0"}"#.into(),
                E::Unsupported("this JWK `kty`"),
            ),
            ("{not json".into(), E::Invalid("not a JSON object")),
        ];
        // The secret parts of the fixtures, as they appear in the specs.
        let mut material: Vec<String> = [P256, RSA2048, RSA1024, P384, ED25519]
            .iter()
            .flat_map(|pem| {
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::to_string)
            })
            .collect();
        for m in [ec_jwk(), rsa_jwk()] {
            for k in ["d", "p", "q"] {
                if let Some(v) = m.get(k).and_then(Value::as_str) {
                    material.push(v.to_string());
                }
            }
        }
        for (spec, want) in cases {
            let got = ClientKey::parse(&spec, None).unwrap_err();
            assert_eq!(got, want, "{}", spec.get(..40).unwrap_or(&spec));
            let msg = got.to_string();
            assert!(!msg.is_empty());
            for m in &material {
                for w in m.as_bytes().windows(8) {
                    let w = std::str::from_utf8(w).unwrap();
                    assert!(!msg.contains(w), "{msg:?} echoes key material");
                }
            }
            assert!(!msg.contains("hunter2"));
        }
        assert_eq!(
            E::RsaSize(1024).to_string(),
            "an RSA key of 1024 bits: must be 2048 to 4096"
        );
    }

    fn sec1_with_header(header: &str) -> String {
        let sec1 = ec_key().to_sec1_pem(LineEnding::LF).unwrap();
        sec1.replacen("-----\n", &format!("-----\n{header}\n"), 1)
    }

    #[test]
    fn debug_never_prints_the_key() {
        for spec in [P256, RSA2048] {
            let key = ClientKey::parse(spec, Some("kid-1")).unwrap();
            assert_eq!(format!("{key:?}"), "[redacted]");
            assert_eq!(format!("{:?}", Some(key)), "Some([redacted])");
        }
    }

    #[test]
    fn odd_pem_text_does_not_panic() {
        for t in [
            "-----BEGIN ",
            "-----BEGIN -----",
            "-----BEGIN é-----\n-----END é-----",
            "-----BEGIN PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY----------END PRIVATE KEY-----",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "{}",
            "{\"kty\":\"RSA\",\"d\":\"\"}",
            "{\"kty\":\"EC\",\"crv\":\"P-256\",\"d\":\"\",\"x\":\"\",\"y\":\"\"}",
        ] {
            assert!(ClientKey::parse(t, None).is_err(), "{t}");
        }
        assert_eq!(pem_blocks("a-----BEGIN X-----b-----END X-----c").len(), 1);
    }
}

//! Publisher keys (ed25519) and the user's trust store. A key id is the first 16 hex digits
//! of the SHA-256 of the public key, so ids cannot be chosen to collide with someone else's.
//! A trusted key is trusted for some namespaces only: `acme` for a publisher's key, `galley`
//! for the first-party key, `*` (every namespace but `galley`) for one's own. A release signed
//! by a trusted key outside its namespaces is refused like one by an unknown key.

use crate::error::{RegistryError, io};
use crate::index::{Release, YankRecord};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// A hex ed25519 signature, if it is one.
fn signature(hex: &str) -> Option<Signature> {
    let bytes: [u8; 64] = hex::decode(hex).ok()?.try_into().ok()?;
    Some(Signature::from_bytes(&bytes))
}

pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// A publisher's signing key.
pub struct KeyPair {
    signing: SigningKey,
}

impl KeyPair {
    pub fn generate() -> Result<Self, RegistryError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| RegistryError::Key(format!("no system randomness: {e}")))?;
        Ok(Self {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    pub fn id(&self) -> String {
        key_id(&self.signing.verifying_key())
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// Writes the secret key (hex) readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), RegistryError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let text = format!("{}\n", hex::encode(self.signing.to_bytes()));
        #[cfg(unix)]
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io(path, e))?;
            f.write_all(text.as_bytes()).map_err(|e| io(path, e))?;
        }
        #[cfg(not(unix))]
        std::fs::write(path, text).map_err(|e| io(path, e))?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| RegistryError::BadFile {
                path: path.into(),
                reason: "not a hex ed25519 secret key".into(),
            })?;
        Ok(Self {
            signing: SigningKey::from_bytes(&bytes),
        })
    }

    /// A signed record yanking (or unyanking) `release`, numbered after its last record.
    pub fn sign_yank(&self, release: &Release, yanked: bool) -> YankRecord {
        let seq = release.next_yank_seq();
        let sig = self.signing.sign(&release.yank_message(yanked, seq));
        YankRecord {
            yanked,
            seq,
            key: self.id(),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// Signs a release in place.
    pub fn sign(&self, release: &mut Release) {
        let sig = self.signing.sign(&release.signed_message());
        release.key = Some(self.id());
        release.signature = Some(hex::encode(sig.to_bytes()));
    }
}

/// The namespace only the first-party key signs unless the user says otherwise by name.
pub const FIRST_PARTY_NAMESPACE: &str = "galley";

/// The namespaces a trusted key may sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace except `galley`.
    Any,
    /// These namespaces only.
    Only(Vec<String>),
}

impl Scope {
    /// `*`, or a comma-separated list of namespaces.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        if s == "*" {
            return Ok(Scope::Any);
        }
        let names: Vec<String> = s.split(',').map(|n| n.trim().to_string()).collect();
        for n in &names {
            // A namespace is a package-name part: the same rule as `NAMESPACE/NAME`.
            crate::index::PackageName::parse(&format!("{n}/x"))
                .map_err(|_| RegistryError::Key(format!("`{n}` is not a namespace")))?;
        }
        Ok(Scope::Only(names))
    }

    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Scope::Any => namespace != FIRST_PARTY_NAMESPACE,
            Scope::Only(names) => names.iter().any(|n| n == namespace),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Any => f.write_str("*"),
            Scope::Only(names) => f.write_str(&names.join(",")),
        }
    }
}

/// The keys a user trusts, by id, each for its namespaces. File format: one
/// `ID PUBLIC_KEY_HEX NAMESPACES` per line (`acme,acme-labs` or `*`); a line without
/// namespaces (written by galley before keys were scoped) is read as `*`.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: BTreeMap<String, (VerifyingKey, Scope)>,
}

impl TrustStore {
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let mut store = Self::default();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(io(path, e)),
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let bad = |reason: String| RegistryError::BadFile {
                path: path.into(),
                reason: format!("line {}: {reason}", i + 1),
            };
            let (Some(id), Some(public)) = (parts.next(), parts.next()) else {
                return Err(bad("expected `ID PUBLIC_KEY NAMESPACES`".into()));
            };
            let scope =
                Scope::parse(parts.next().unwrap_or("*")).map_err(|e| bad(e.to_string()))?;
            store
                .add_scoped(id, public, scope)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(store)
    }

    /// Trusts `public` (hex) for every namespace but `galley` (one's own key); `id` must be
    /// its id, so a typo cannot trust the wrong key.
    pub fn add(&mut self, id: &str, public: &str) -> Result<(), RegistryError> {
        self.add_scoped(id, public, Scope::Any)
    }

    /// Trusts `public` (hex) for the namespaces of `scope` only.
    pub fn add_scoped(
        &mut self,
        id: &str,
        public: &str,
        scope: Scope,
    ) -> Result<(), RegistryError> {
        let bytes: [u8; 32] = hex::decode(public)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                RegistryError::Key(format!("`{public}` is not a hex ed25519 public key"))
            })?;
        let key =
            VerifyingKey::from_bytes(&bytes).map_err(|e| RegistryError::Key(e.to_string()))?;
        if key_id(&key) != id {
            return Err(RegistryError::Key(format!(
                "key id {id} does not match the public key (its id is {})",
                key_id(&key)
            )));
        }
        self.keys.insert(id.to_string(), (key, scope));
        Ok(())
    }

    /// The namespaces `id` is trusted for, if it is trusted.
    pub fn scope(&self, id: &str) -> Option<&Scope> {
        self.keys.get(id).map(|(_, s)| s)
    }

    pub fn save(&self, path: &Path) -> Result<(), RegistryError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let text: String = self
            .keys
            .iter()
            .map(|(id, (k, scope))| format!("{id} {} {scope}\n", hex::encode(k.as_bytes())))
            .collect();
        std::fs::write(path, text).map_err(|e| io(path, e))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Whether `r` is yanked, as far as an installer may believe. An unsigned release has only
    /// the registry's flag. A signed one is yanked exactly when it carries a yank record
    /// signed by its own (trusted) key that says so; a bare flag, or a record by anyone else,
    /// is ignored: otherwise whoever serves the index could hide good versions to force an
    /// old one, or revive a version its publisher withdrew.
    pub fn yanked(&self, r: &Release) -> bool {
        self.yank_state(r).0
    }

    /// `yanked`, with the reason when a yank mark was ignored (for one warning per release).
    pub fn yank_state(&self, r: &Release) -> (bool, Option<String>) {
        let Some(signer) = &r.key else {
            return (r.yanked, None);
        };
        let Some(y) = &r.yank else {
            let why = r.yanked.then(|| {
                format!(
                    "{}@{}: the registry marks it yanked without a yank record signed by {signer}; ignoring the mark",
                    r.name, r.version
                )
            });
            return (false, why);
        };
        let valid = &y.key == signer
            && self.keys.get(signer).is_some_and(|(key, _)| {
                signature(&y.signature)
                    .is_some_and(|sig| key.verify(&r.yank_message(y.yanked, y.seq), &sig).is_ok())
            });
        if !valid {
            let why = format!(
                "{}@{}: its yank record is not signed by the release's key {signer}; ignoring it",
                r.name, r.version
            );
            return (false, Some(why));
        }
        (y.yanked, None)
    }

    /// Checks a release's signature: present, by a trusted key, and valid.
    pub fn verify(&self, r: &Release) -> Result<String, RegistryError> {
        let (name, version) = (r.name.to_string(), r.version.to_string());
        let (Some(id), Some(sig)) = (&r.key, &r.signature) else {
            return Err(RegistryError::Unsigned { name, version });
        };
        let Some((key, scope)) = self.keys.get(id) else {
            return Err(RegistryError::UntrustedKey {
                name,
                version,
                key: id.clone(),
                namespace: r.name.namespace.clone(),
            });
        };
        if !scope.allows(&r.name.namespace) {
            return Err(RegistryError::KeyOutOfScope {
                name,
                version,
                key: id.clone(),
                namespace: r.name.namespace.clone(),
                scope: scope.to_string(),
            });
        }
        let bad = || RegistryError::BadSignature {
            name: name.clone(),
            version: version.clone(),
            key: id.clone(),
        };
        key.verify(&r.signed_message(), &signature(sig).ok_or_else(bad)?)
            .map_err(|_| bad())?;
        Ok(id.clone())
    }
}

//! Publisher keys (ed25519) and the user's trust store. A key id is the first 16 hex digits
//! of the SHA-256 of the public key, so ids cannot be chosen to collide with someone else's.

use crate::error::{RegistryError, io};
use crate::index::Release;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

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

    /// Signs a release in place.
    pub fn sign(&self, release: &mut Release) {
        let sig = self.signing.sign(&release.signed_message());
        release.key = Some(self.id());
        release.signature = Some(hex::encode(sig.to_bytes()));
    }
}

/// The keys a user trusts, by id. File format: one `ID PUBLIC_KEY_HEX [comment]` per line.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: BTreeMap<String, VerifyingKey>,
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
            let (Some(id), Some(public)) = (parts.next(), parts.next()) else {
                return Err(RegistryError::BadFile {
                    path: path.into(),
                    reason: format!("line {}: expected `ID PUBLIC_KEY`", i + 1),
                });
            };
            store.add(id, public).map_err(|e| RegistryError::BadFile {
                path: path.into(),
                reason: format!("line {}: {e}", i + 1),
            })?;
        }
        Ok(store)
    }

    /// Trusts `public` (hex); `id` must be its id, so a typo cannot trust the wrong key.
    pub fn add(&mut self, id: &str, public: &str) -> Result<(), RegistryError> {
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
        self.keys.insert(id.to_string(), key);
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<(), RegistryError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let text: String = self
            .keys
            .iter()
            .map(|(id, k)| format!("{id} {}\n", hex::encode(k.as_bytes())))
            .collect();
        std::fs::write(path, text).map_err(|e| io(path, e))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Checks a release's signature: present, by a trusted key, and valid.
    pub fn verify(&self, r: &Release) -> Result<String, RegistryError> {
        let (name, version) = (r.name.to_string(), r.version.to_string());
        let (Some(id), Some(sig)) = (&r.key, &r.signature) else {
            return Err(RegistryError::Unsigned { name, version });
        };
        let Some(key) = self.keys.get(id) else {
            return Err(RegistryError::UntrustedKey {
                name,
                version,
                key: id.clone(),
            });
        };
        let bad = || RegistryError::BadSignature {
            name: name.clone(),
            version: version.clone(),
            key: id.clone(),
        };
        let bytes: [u8; 64] = hex::decode(sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        key.verify(&r.signed_message(), &Signature::from_bytes(&bytes))
            .map_err(|_| bad())?;
        Ok(id.clone())
    }
}

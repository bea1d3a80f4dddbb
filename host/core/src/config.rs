//! The one YAML loader. Every galley config (train, score, infer, and the ones to come) is
//! read here: the file is deserialized into its typed struct first on its own, so a mistake
//! in it is reported as `FILE:LINE:COLUMN: `key.path`: what is wrong`; then `key=value`
//! overrides from the command line are applied to the YAML tree (a value is parsed as YAML,
//! so `x=3` is a number and `x=[a, b]` a list; text that is not YAML stays text) and the
//! result is deserialized again, an error naming the override's key.
//!
//! The YAML crate is serde_norway, the maintained fork of serde_yaml 0.9 (which is
//! deprecated): the same data model and location-carrying errors.

use serde::de::DeserializeOwned;
use std::path::Path;

pub use serde_norway as yaml;

/// A config that could not be read, naming where (`file:line:column` when known) and which key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{at}: {msg}")]
pub struct ConfigError {
    /// `FILE`, `FILE:LINE:COLUMN`, or `override KEY=VALUE`.
    pub at: String,
    pub msg: String,
}

impl ConfigError {
    pub fn new(at: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            at: at.into(),
            msg: msg.into(),
        }
    }
}

/// Reads `path` (none: an empty config) into `T`, then applies `overrides` (`a.b=c`).
/// `expand` may rewrite an override's key (e.g. `temperature` to `sampling.temperature`).
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    overrides: &[String],
    expand: &dyn Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let (text, name) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| {
                ConfigError::new(p.display().to_string(), format!("cannot read: {e}"))
            })?,
            p.display().to_string(),
        ),
        None => (String::new(), "(no config file)".to_string()),
    };
    parse(&text, &name, overrides, expand)
}

/// [`load`] over text already read; `name` is what errors call it.
pub fn parse<T: DeserializeOwned>(
    text: &str,
    name: &str,
    overrides: &[String],
    expand: &dyn Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let empty = text.trim().is_empty();
    // The file alone first, so an error can name its line and key.
    if !empty {
        let de = serde_norway::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) if overrides.is_empty() => return Ok(v),
            Ok(_) => {}
            Err(e) => {
                let key = e.path().to_string();
                let inner = e.into_inner();
                let at = inner
                    .location()
                    .map(|l| format!("{name}:{}:{}", l.line(), l.column()))
                    .unwrap_or_else(|| name.to_string());
                return Err(ConfigError::new(at, keyed(&key, &inner)));
            }
        }
    }
    let mut value: yaml::Value = if empty {
        yaml::Value::Mapping(Default::default())
    } else {
        serde_norway::from_str(text).map_err(|e| ConfigError::new(name, e.to_string()))?
    };
    for set in overrides {
        apply_override(&mut value, set, expand)?;
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::new(
            format!("{name} (after the overrides)"),
            keyed(&key, e.inner()),
        )
    })
}

fn keyed(key: &str, e: &serde_norway::Error) -> String {
    // The location is already in `at`; serde_norway appends it to its message too.
    let s = e.to_string();
    let msg = match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    if key.is_empty() || key == "." {
        msg
    } else {
        format!("`{key}`: {msg}")
    }
}

/// Applies `a.b=c` (the value parsed as YAML) to `root`.
pub fn apply_override(
    root: &mut yaml::Value,
    set: &str,
    expand: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let at = || format!("override `{set}`");
    let (key, raw) = set
        .split_once('=')
        .ok_or_else(|| ConfigError::new(at(), "expected KEY=VALUE"))?;
    let key = expand(key.trim()).unwrap_or_else(|| key.trim().to_string());
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ConfigError::new(at(), "the key is empty"));
    }
    let value: yaml::Value =
        serde_norway::from_str(raw).unwrap_or_else(|_| yaml::Value::String(raw.into()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        if node.is_null() {
            *node = yaml::Value::Mapping(Default::default());
        }
        let map = node.as_mapping_mut().ok_or_else(|| {
            ConfigError::new(at(), format!("`{}` is not a section", parts[..i].join(".")))
        })?;
        let k = yaml::Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map
            .entry(k)
            .or_insert_with(|| yaml::Value::Mapping(Default::default()));
    }
    Ok(())
}

/// No key rewriting.
pub fn no_expand(_: &str) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        a: Inner,
        #[serde(default)]
        list: Vec<String>,
    }
    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        x: u32,
        #[serde(default)]
        name: String,
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse::<Cfg>("a:\n  x: 1\n  y: 2\n", "c.yaml", &[], &no_expand).unwrap_err();
        assert!(e.at.starts_with("c.yaml:3:"), "{e}");
        assert!(
            e.msg.contains("`a.y`") || (e.msg.contains("`a`") && e.msg.contains("`y`")),
            "{e}"
        );
        let e = parse::<Cfg>("a:\n  x: many\n", "c.yaml", &[], &no_expand).unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:2:"), "{e}");
        assert!(e.msg.contains("`a.x`"), "{e}");
    }

    #[test]
    fn overrides_are_yaml_values_at_dotted_keys() {
        let c: Cfg = parse(
            "a: {x: 1}\n",
            "c.yaml",
            &[
                "a.x=3".into(),
                "a.name=hello world".into(),
                "list=[p, q]".into(),
            ],
            &no_expand,
        )
        .unwrap();
        assert_eq!(c.a.x, 3);
        assert_eq!(c.a.name, "hello world");
        assert_eq!(c.list, ["p", "q"]);
        let c: Cfg = parse("", "-", &["x=4".into()], &|k| {
            (k == "x").then(|| "a.x".to_string())
        })
        .unwrap();
        assert_eq!(c.a.x, 4);
        let e = parse::<Cfg>("a: {x: 1}\n", "c.yaml", &["a.x.z=1".into()], &no_expand).unwrap_err();
        assert!(e.to_string().contains("`a.x` is not a section"), "{e}");
        let e = parse::<Cfg>("", "c.yaml", &["a.q=1".into()], &no_expand).unwrap_err();
        assert!(e.msg.contains("`q`"), "{e}");
        assert!(parse::<Cfg>("", "c", &["novalue".into()], &no_expand).is_err());
    }
}

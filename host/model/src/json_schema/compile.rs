//! Compiling a JSON schema into the node table [`super::SchemaPrefix`] walks: what each
//! keyword means, which ones are refused (with the path to them), `$ref`s resolved into
//! shared nodes (recursion through a reserved slot), and each node's possible first
//! characters, by which union branches are told apart.

use super::tree::{Json, Obj};
use regex_automata::dfa::StartKind;
use regex_automata::dfa::dense;
use std::collections::HashMap;

pub(super) type Dfa = dense::DFA<Vec<u32>>;

/// Bytes one pattern's automaton may take, and all of a schema's together.
const PATTERN_LIMIT: usize = 4 << 20;
const PATTERN_BUDGET: usize = 16 << 20;
const MAX_PATTERNS: usize = 64;

/// `format`s as whole-string patterns: RFC 3339 times and dates, UUIDs, and loose shapes of
/// e-mail addresses, URIs and IPv4 addresses (the shape only: `x@y.z` is an address here
/// whether or not it exists).
const FORMATS: &[(&str, &str)] = &[
    (
        "date-time",
        r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])",
    ),
    ("date", r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"),
    (
        "time",
        r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?",
    ),
    (
        "uuid",
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    ),
    (
        "email",
        r"[^@\s\x00-\x1f]+@[^@\s\x00-\x1f.]+(\.[^@\s\x00-\x1f.]+)+",
    ),
    ("uri", r"[A-Za-z][A-Za-z0-9+.-]*:[^\s\x00-\x1f]+"),
    (
        "ipv4",
        r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    ),
];

/// JSON Schema's `pattern` matches anywhere in the string (a search); galley's DFAs match the
/// whole string, so a pattern is wrapped in "anything" on each side it does not anchor.
fn whole_string(p: &str) -> String {
    let (p, head) = match p.strip_prefix('^') {
        Some(rest) => (rest, ""),
        None => (p, "(?s:.*)"),
    };
    // A final `$` anchors unless it is escaped (an odd number of backslashes before it).
    let anchored_end = p.ends_with('$')
        && p[..p.len() - 1]
            .chars()
            .rev()
            .take_while(|&c| c == '\\')
            .count()
            % 2
            == 0;
    let (p, tail) = if anchored_end {
        (&p[..p.len() - 1], "")
    } else {
        (p, "(?s:.*)")
    };
    format!("{head}(?:{p}){tail}")
}

fn format_pattern(name: &str) -> Option<&'static str> {
    FORMATS.iter().find(|(n, _)| *n == name).map(|(_, re)| *re)
}

/// A schema that cannot be enforced, with where in it (a JSON pointer) and why.
#[derive(Debug, thiserror::Error)]
#[error("json_schema at `{path}`: {message}")]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

fn err(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        message: message.into(),
    }
}

/// One property of an object node: its key as JSON text (quotes included), its value's node.
#[derive(Debug, Clone)]
pub(super) struct Prop {
    pub(super) key: String,
    pub(super) node: u16,
    pub(super) required: bool,
}

#[derive(Debug, Clone)]
pub(super) enum Node {
    Object(Vec<Prop>),
    Array {
        items: u16,
        min: u32,
        max: u32,
    },
    /// `pattern`: an index into [`Schema::patterns`].
    Str {
        min: u32,
        max: u32,
        pattern: Option<u16>,
    },
    Number {
        integer: bool,
    },
    /// Exactly one of these JSON texts (`enum`, `const`, booleans, null).
    Choice(Vec<String>),
    /// One of these nodes, told apart by their first character.
    Union(Vec<u16>),
    /// One of these objects, told apart by their first property: the same key in each, a
    /// different constant value (a discriminated union, as pydantic writes `Union[A, B]`
    /// with a `Literal` tag). `tag` is that property, its node a Choice of the values in
    /// `branches`' order; once the value is written, the object goes on as that branch.
    Tagged {
        tag: Vec<Prop>,
        branches: Vec<u16>,
    },
    /// A `$ref` not compiled yet (replaced before compiling ends).
    Pending,
}

/// A compiled schema (shared by every sequence that follows it).
#[derive(Debug, Clone)]
pub struct Schema {
    pub(super) nodes: Vec<Node>,
    /// Strings' `pattern`s (and `format`s, as patterns), each a DFA over the string's
    /// unescaped UTF-8 that matches the whole string.
    pub(super) patterns: Vec<Dfa>,
    /// Each node's possible first characters.
    pub(super) first: Vec<Vec<char>>,
    pub(super) root: u16,
}

/// Keywords that describe without constraining.
const NOTES: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "strict",
    // OpenAPI's / pydantic's hint for a tagged union: galley finds the tag itself.
    "discriminator",
];
/// Properties of an object, values of an enum, tags of a union: each is a bit of a mask.
const MAX_CHOICES: usize = 64;
/// The longest key or constant matched as exact text (its position is kept in 16 bits).
const MAX_TEXT: usize = 4096;

struct Compiler<'a> {
    doc: &'a Json,
    nodes: Vec<Node>,
    patterns: Vec<Dfa>,
    refs: HashMap<String, u16>,
    /// Unions to check, with their paths.
    unions: Vec<(u16, String)>,
}

impl Schema {
    /// Compiles `schema` (JSON text; its properties' order is the order they are written in),
    /// whose root must be an object, as OpenAI requires.
    pub fn compile_str(schema: &str) -> Result<Schema, SchemaError> {
        let tree: Json =
            serde_json::from_str(schema).map_err(|e| err("", format!("not JSON: {e}")))?;
        Self::compile(&tree)
    }

    /// Compiles a parsed schema (its root an object).
    pub fn compile(schema: &Json) -> Result<Schema, SchemaError> {
        Self::compile_root(schema, false)
    }

    /// Compiles a parsed schema whose root may also be an array (a list of tool calls, as
    /// Mistral's models write them); still not a scalar, whose end the text could not show.
    pub fn compile_list(schema: &Json) -> Result<Schema, SchemaError> {
        Self::compile_root(schema, true)
    }

    fn compile_root(schema: &Json, list: bool) -> Result<Schema, SchemaError> {
        let mut c = Compiler {
            doc: schema,
            nodes: Vec::new(),
            patterns: Vec::new(),
            refs: HashMap::new(),
            unions: Vec::new(),
        };
        let root = c.node(schema, "")?;
        c.tag_unions()?;
        let first = (0..c.nodes.len() as u16)
            .map(|n| {
                let mut f = Vec::new();
                firsts(&c.nodes, n, &mut f, 0);
                f.sort_unstable();
                f.dedup();
                f
            })
            .collect();
        let s = Schema {
            nodes: c.nodes,
            patterns: c.patterns,
            first,
            root,
        };
        for (id, path) in &c.unions {
            let Node::Union(kids) = &s.nodes[*id as usize] else {
                continue;
            };
            let mut seen: Vec<char> = Vec::new();
            for &k in kids {
                let f = &s.first[k as usize];
                if f.is_empty() {
                    return Err(err(
                        path,
                        "a branch that is only a reference back to this union has no first character",
                    ));
                }
                if let Some(c) = f.iter().find(|c| seen.contains(c)) {
                    return Err(err(
                        path,
                        format!(
                            "two branches can both begin with `{c}`: galley tells branches apart by their first character (for example one string, one number and null), and objects by a first property they all have, with a different constant in each"
                        ),
                    ));
                }
                seen.extend(f);
            }
        }
        let root_ok = match s.nodes[resolve(&s.nodes, root) as usize] {
            Node::Object(_) | Node::Tagged { .. } => true,
            Node::Array { .. } => list,
            _ => false,
        };
        if !root_ok {
            return Err(err(
                "",
                "the root must be an object (`\"type\": \"object\"`)",
            ));
        }
        Ok(s)
    }
}

/// `node` with `$ref` aliases (one-branch unions) followed.
fn resolve(nodes: &[Node], mut node: u16) -> u16 {
    for _ in 0..32 {
        match &nodes[node as usize] {
            Node::Union(kids) if kids.len() == 1 => node = kids[0],
            _ => break,
        }
    }
    node
}

/// The characters a value of `node` may begin with (for telling union branches apart).
/// (`depth` stops a union that is, through references, a branch of itself.)
fn firsts(nodes: &[Node], node: u16, out: &mut Vec<char>, depth: u8) {
    if depth > 32 {
        return;
    }
    match &nodes[node as usize] {
        Node::Object(_) | Node::Tagged { .. } => out.push('{'),
        Node::Array { .. } => out.push('['),
        Node::Str { .. } => out.push('"'),
        Node::Number { .. } => out.extend(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']),
        Node::Choice(texts) => out.extend(texts.iter().filter_map(|t| t.chars().next())),
        Node::Union(kids) => kids.iter().for_each(|&k| firsts(nodes, k, out, depth + 1)),
        Node::Pending => {}
    }
}

impl Compiler<'_> {
    fn push(&mut self, n: Node, path: &str) -> Result<u16, SchemaError> {
        if self.nodes.len() >= u16::MAX as usize {
            return Err(err(path, "the schema is too large"));
        }
        self.nodes.push(n);
        Ok((self.nodes.len() - 1) as u16)
    }

    fn node(&mut self, v: &Json, path: &str) -> Result<u16, SchemaError> {
        let obj = match v {
            Json::Object(o) => o,
            Json::Bool(_) => {
                return Err(err(
                    path,
                    "a schema that allows any value cannot be enforced; give it a type",
                ));
            }
            _ => return Err(err(path, "a schema must be an object")),
        };
        if let Some(r) = obj.get("$ref") {
            return self.reference(r, path);
        }
        for k in obj.keys() {
            let known = NOTES.contains(&k.as_str())
                || matches!(
                    k.as_str(),
                    "type"
                        | "properties"
                        | "required"
                        | "additionalProperties"
                        | "items"
                        | "minItems"
                        | "maxItems"
                        | "minLength"
                        | "maxLength"
                        | "enum"
                        | "const"
                        | "anyOf"
                        | "oneOf"
                        | "pattern"
                        | "format"
                );
            if !known {
                return Err(err(
                    &format!("{path}/{k}"),
                    format!(
                        "the keyword `{k}` is not supported (galley enforces type, properties, required, items, minItems, maxItems, minLength, maxLength, pattern, format, enum, const, anyOf, oneOf, $ref)"
                    ),
                ));
            }
        }
        if let Some(values) = obj.get("enum") {
            let values = values
                .as_array()
                .ok_or_else(|| err(&format!("{path}/enum"), "`enum` must be a list"))?;
            return self.choice(values, &format!("{path}/enum"));
        }
        if let Some(value) = obj.get("const") {
            return self.choice(std::slice::from_ref(value), &format!("{path}/const"));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = obj.get(key) {
                let branches = branches.as_array().ok_or_else(|| {
                    err(&format!("{path}/{key}"), format!("`{key}` must be a list"))
                })?;
                let kids = branches
                    .iter()
                    .enumerate()
                    .map(|(i, b)| self.node(b, &format!("{path}/{key}/{i}")))
                    .collect::<Result<Vec<_>, _>>()?;
                return self.union(kids, &format!("{path}/{key}"));
            }
        }
        let kind = match obj.get("type") {
            Some(Json::String(t)) => t.clone(),
            Some(Json::Array(types)) => {
                // ["string", "null"]: one branch per type, with the same keywords.
                let mut kids = Vec::new();
                for (i, t) in types.iter().enumerate() {
                    let mut one = obj.clone();
                    one.insert("type", t.clone());
                    kids.push(self.node(&Json::Object(one), &format!("{path}/type/{i}"))?);
                }
                return self.union(kids, &format!("{path}/type"));
            }
            Some(_) => {
                return Err(err(
                    &format!("{path}/type"),
                    "`type` must be a string or a list",
                ));
            }
            None if obj.contains_key("properties") => "object".into(),
            None if obj.contains_key("items") => "array".into(),
            None => {
                return Err(err(
                    path,
                    "a schema without `type` allows any value, which cannot be enforced; give it a type",
                ));
            }
        };
        let count = |k: &str| -> Result<Option<u32>, SchemaError> {
            obj.get(k)
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            err(&format!("{path}/{k}"), format!("`{k}` must be a count"))
                        })
                })
                .transpose()
        };
        let node = match kind.as_str() {
            "object" => return self.object(obj, path),
            "array" => {
                let items = obj.get("items").ok_or_else(|| {
                    err(path, "an array needs `items` (a schema for its elements)")
                })?;
                // Reserve the array's slot first so recursive items can point at it.
                let id = self.push(Node::Pending, path)?;
                let items = self.node(items, &format!("{path}/items"))?;
                let (min, max) = (
                    count("minItems")?.unwrap_or(0),
                    count("maxItems")?.unwrap_or(u32::MAX),
                );
                if min > max {
                    return Err(err(path, "minItems is above maxItems"));
                }
                self.nodes[id as usize] = Node::Array { items, min, max };
                return Ok(id);
            }
            "string" => {
                let (min, max) = (
                    count("minLength")?.unwrap_or(0),
                    count("maxLength")?.unwrap_or(u32::MAX),
                );
                if min > max {
                    return Err(err(path, "minLength is above maxLength"));
                }
                let pattern = match (obj.get("pattern"), obj.get("format")) {
                    (None, None) => None,
                    (Some(_), Some(_)) => {
                        return Err(err(path, "both `pattern` and `format`: give one"));
                    }
                    (Some(p), None) => {
                        let p = p.as_str().ok_or_else(|| {
                            err(&format!("{path}/pattern"), "`pattern` must be a string")
                        })?;
                        Some(self.pattern(&whole_string(p), &format!("{path}/pattern"))?)
                    }
                    (None, Some(f)) => {
                        let f = f.as_str().ok_or_else(|| {
                            err(&format!("{path}/format"), "`format` must be a string")
                        })?;
                        let re = format_pattern(f).ok_or_else(|| {
                            err(
                                &format!("{path}/format"),
                                format!(
                                    "the format `{f}` is not supported ({})",
                                    FORMATS
                                        .iter()
                                        .map(|(n, _)| *n)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            )
                        })?;
                        Some(self.pattern(re, &format!("{path}/format"))?)
                    }
                };
                Node::Str { min, max, pattern }
            }
            "number" => Node::Number { integer: false },
            "integer" => Node::Number { integer: true },
            "boolean" => Node::Choice(vec!["true".into(), "false".into()]),
            "null" => Node::Choice(vec!["null".into()]),
            other => {
                return Err(err(
                    &format!("{path}/type"),
                    format!("unknown type `{other}`"),
                ));
            }
        };
        let wrong = |k: &str| obj.contains_key(k);
        for (k, for_kind) in [
            ("minItems", "array"),
            ("maxItems", "array"),
            ("minLength", "string"),
            ("maxLength", "string"),
            ("pattern", "string"),
            ("format", "string"),
            ("properties", "object"),
            ("required", "object"),
        ] {
            if wrong(k) && kind != for_kind {
                return Err(err(&format!("{path}/{k}"), format!("`{k}` on a {kind}")));
            }
        }
        self.push(node, path)
    }

    fn object(&mut self, obj: &Obj, path: &str) -> Result<u16, SchemaError> {
        if let Some(extra) = obj.get("additionalProperties")
            && !matches!(extra, Json::Bool(_))
        {
            return Err(err(
                &format!("{path}/additionalProperties"),
                "only `true` or `false` (galley writes the declared properties only)",
            ));
        }
        let required: Vec<&str> = match obj.get("required") {
            None => Vec::new(),
            Some(Json::Array(r)) => r
                .iter()
                .map(|k| {
                    k.as_str()
                        .ok_or_else(|| err(&format!("{path}/required"), "names must be strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(err(
                    &format!("{path}/required"),
                    "`required` must be a list",
                ));
            }
        };
        let empty = Obj::default();
        let props = match obj.get("properties") {
            None => &empty,
            Some(Json::Object(p)) => p,
            Some(_) => {
                return Err(err(
                    &format!("{path}/properties"),
                    "`properties` must be an object",
                ));
            }
        };
        if props.len() > MAX_CHOICES {
            return Err(err(
                &format!("{path}/properties"),
                format!("more than {MAX_CHOICES} properties"),
            ));
        }
        if let Some(missing) = required.iter().find(|k| !props.contains_key(k)) {
            return Err(err(
                &format!("{path}/required"),
                format!("`{missing}` is required but not among the properties"),
            ));
        }
        let id = self.push(Node::Pending, path)?;
        let mut out = Vec::with_capacity(props.len());
        for (k, v) in &props.0 {
            if k.len() > MAX_TEXT {
                return Err(err(
                    &format!("{path}/properties"),
                    format!("a key longer than {MAX_TEXT} bytes"),
                ));
            }
            let node = self.node(v, &format!("{path}/properties/{k}"))?;
            out.push(Prop {
                key: serde_json::to_string(k).expect("a string serializes"),
                node,
                required: required.contains(&k.as_str()),
            });
        }
        self.nodes[id as usize] = Node::Object(out);
        Ok(id)
    }

    fn choice(&mut self, values: &[Json], path: &str) -> Result<u16, SchemaError> {
        if values.is_empty() || values.len() > MAX_CHOICES {
            return Err(err(path, format!("between 1 and {MAX_CHOICES} values")));
        }
        let mut texts: Vec<String> = Vec::with_capacity(values.len());
        for v in values {
            let t = v.to_value().to_string();
            if t.len() > MAX_TEXT {
                return Err(err(path, format!("a value longer than {MAX_TEXT} bytes")));
            }
            if !texts.contains(&t) {
                texts.push(t);
            }
        }
        self.push(Node::Choice(texts), path)
    }

    /// A whole-string DFA for `re`, bounded in size (a hostile pattern is an error, not a
    /// gigabyte of states).
    fn pattern(&mut self, re: &str, path: &str) -> Result<u16, SchemaError> {
        // A schema comes from a request: its automata are bounded one by one and together,
        // so no request builds more than PATTERN_BUDGET bytes of them.
        let used: usize = self.patterns.iter().map(|d| d.memory_usage()).sum();
        let left = PATTERN_BUDGET.saturating_sub(used);
        if self.patterns.len() >= MAX_PATTERNS || left == 0 {
            return Err(err(
                path,
                format!(
                    "more patterns than galley builds for one schema ({MAX_PATTERNS}, {} MiB)",
                    PATTERN_BUDGET >> 20
                ),
            ));
        }
        let limit = left.min(PATTERN_LIMIT);
        let dfa = dense::Builder::new()
            .configure(
                dense::DFA::config()
                    .start_kind(StartKind::Anchored)
                    // A state no match can follow becomes the dead state, so a string
                    // is refused at the first character that rules a match out.
                    .minimize(true)
                    .dfa_size_limit(Some(limit))
                    .determinize_size_limit(Some(limit)),
            )
            // `$`: a DFA reports a match one byte late, so without the end anchor the
            // byte after a complete match (a `T` after a date) would look alive.
            .build(&format!("(?:{re})$"))
            .map_err(|e| {
                err(
                    path,
                    format!("the pattern does not compile to an automaton galley can walk: {e}"),
                )
            })?;
        self.patterns.push(dfa);
        Ok((self.patterns.len() - 1) as u16)
    }

    /// Unions whose branches are all objects beginning with the same key and a different
    /// constant become tagged unions (before the first-character check, which would refuse
    /// them: every object begins with `{`).
    fn tag_unions(&mut self) -> Result<(), SchemaError> {
        for (id, _) in self.unions.clone() {
            let Node::Union(kids) = &self.nodes[id as usize] else {
                continue;
            };
            // A tag is matched as a choice: at most MAX_CHOICES of them.
            if kids.len() < 2 || kids.len() > MAX_CHOICES {
                continue;
            }
            let mut key: Option<&str> = None;
            let mut tags: Vec<String> = Vec::new();
            let mut branches = Vec::new();
            let tagged = kids.iter().all(|&k| {
                let k = resolve(&self.nodes, k);
                let Node::Object(props) = &self.nodes[k as usize] else {
                    return false;
                };
                let Some(first) = props.first().filter(|p| p.required) else {
                    return false;
                };
                let Node::Choice(values) = &self.nodes[resolve(&self.nodes, first.node) as usize]
                else {
                    return false;
                };
                if values.len() != 1 || tags.contains(&values[0]) {
                    return false;
                }
                if *key.get_or_insert(&first.key) != first.key {
                    return false;
                }
                tags.push(values[0].clone());
                branches.push(k);
                true
            });
            let Some(key) = key.filter(|_| tagged).map(str::to_string) else {
                continue;
            };
            let choice = self.push(Node::Choice(tags), "")?;
            let tag = vec![Prop {
                key,
                node: choice,
                required: true,
            }];
            self.nodes[id as usize] = Node::Tagged { tag, branches };
        }
        Ok(())
    }

    /// A union; its branches are checked to begin differently once every node is compiled
    /// (a branch may be a reference still compiling).
    fn union(&mut self, kids: Vec<u16>, path: &str) -> Result<u16, SchemaError> {
        let id = self.push(Node::Union(kids), path)?;
        self.unions.push((id, path.to_string()));
        Ok(id)
    }

    fn reference(&mut self, r: &Json, path: &str) -> Result<u16, SchemaError> {
        let r = r
            .as_str()
            .ok_or_else(|| err(&format!("{path}/$ref"), "`$ref` must be a string"))?;
        if let Some(&id) = self.refs.get(r) {
            return Ok(id);
        }
        let target = r
            .strip_prefix('#')
            .and_then(|p| self.doc.pointer(p))
            .ok_or_else(|| {
                err(
                    &format!("{path}/$ref"),
                    format!(
                        "`{r}` is not a definition in this schema (only `#/...` references are)"
                    ),
                )
            })?;
        // The reference's own slot, so that a reference back to it while its target compiles
        // (recursion) has a node to point at; it becomes a one-branch union over the target.
        let slot = self.push(Node::Pending, path)?;
        self.refs.insert(r.into(), slot);
        let id = self.node(target, r.trim_start_matches('#'))?;
        self.nodes[slot as usize] = Node::Union(vec![id]);
        Ok(slot)
    }
}

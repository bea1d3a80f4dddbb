//! Schema-constrained prefixes: instances walk through character by character and end
//! complete; texts that break the schema stop at the first character that does.

use super::*;

/// Compiled from JSON text, so the properties keep their written order.
fn schema(text: &str) -> Schema {
    Schema::compile_str(text).unwrap()
}

/// Feeds `text` char by char: the state after it, or the byte offset where it broke.
fn feed(s: &Schema, text: &str) -> Result<SchemaPrefix, usize> {
    let mut st = SchemaPrefix::new();
    for (i, c) in text.char_indices() {
        st = st.after(s, &c.to_string()).ok_or(i)?;
    }
    Ok(st)
}

fn accepts(s: &Schema, text: &str) -> bool {
    feed(s, text).is_ok_and(|st| st.done())
}

/// Where `text` breaks (it must).
fn breaks_at(s: &Schema, text: &str) -> usize {
    match feed(s, text) {
        Ok(st) => panic!("{text:?} was accepted (done: {})", st.done()),
        Err(i) => i,
    }
}

fn person() -> Schema {
    schema(
        r##"{
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer"},
            "email": {"type": ["string", "null"]},
            "color": {"enum": ["red", "green", 10, 100]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "color", "tags"],
        "additionalProperties": false
    }"##,
    )
}

#[test]
fn instances_in_schema_order_are_accepted_and_end_the_document() {
    let s = person();
    for doc in [
        r##"{"name":"Ann","age":31,"color":"red","tags":["a"]}"##,
        r##"{ "name" : "Ann Lee" , "age": -4, "email": null, "color": 100, "tags": ["a", "b"], "ok": true }"##,
        r##"{"name":"","age":0,"email":"a@b","color":10,"tags":["x\"y\u00e9"],"ok":false}"##,
        "{\n  \"name\": \"Bo\",\n  \"age\": 7,\n  \"color\": \"green\",\n  \"tags\": [\"t\"]\n}",
    ] {
        assert!(accepts(&s, doc), "{doc}");
    }
    // Complete but not closed: not done.
    assert!(
        !feed(&s, r##"{"name":"Ann","age":31,"color":"red","tags":["a"]"##)
            .unwrap()
            .done()
    );
}

#[test]
fn what_breaks_the_schema_stops_where_it_breaks() {
    let s = person();
    let cases = [
        // A required property skipped: `age` is the only key that may come after name.
        (r##"{"name":"A","color""##, 13),
        // Keys out of order, unknown keys, a closing brace before the required ones.
        (r##"{"age":1"##, 2),
        (r##"{"nickname":"##, 3),
        (r##"{"name":"A"}"##, 11),
        // A string past maxLength, an integer with a fraction, a value outside the enum.
        (r##"{"name":"123456789"##, 17),
        (r##"{"name":"A","age":1.5"##, 19),
        (r##"{"name":"A","age":1,"color":"blue""##, 29),
        (r##"{"name":"A","age":1,"color":1000"##, 31),
        // Arrays: at least one item, at most two; items of the item type.
        (r##"{"name":"A","age":1,"color":10,"tags":[]"##, 39),
        (r##"{"name":"A","age":1,"color":10,"tags":["a","b","##, 46),
        (r##"{"name":"A","age":1,"color":10,"tags":[1"##, 39),
        // Nothing before the object; nothing after it.
        (r##" {"##, 0),
        (r##"{"name":"A","age":1,"color":10,"tags":["a"]} "##, 44),
    ];
    for (text, at) in cases {
        assert_eq!(breaks_at(&s, text), at, "{text}");
    }
}

#[test]
fn references_recurse_and_unions_pick_their_branch_by_first_character() {
    // A linked list, as pydantic writes a self-referencing model.
    let s = schema(
        r##"{
        "$defs": {"Node": {"type": "object", "properties": {
            "v": {"type": "number"},
            "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}
        }, "required": ["v", "next"]}},
        "$ref": "#/$defs/Node"
    }"##,
    );
    assert!(accepts(&s, r##"{"v":1,"next":{"v":2.5e3,"next":null}}"##));
    assert!(accepts(&s, r##"{"v":-0.5,"next":null}"##));
    assert_eq!(breaks_at(&s, r##"{"v":1,"next":"x"##), 14);
}

#[test]
fn optional_properties_may_be_skipped_but_not_reordered() {
    let s = schema(
        r##"{"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}
    }}"##,
    );
    for doc in [
        "{}",
        r##"{"b":""}"##,
        r##"{"a":"","c":""}"##,
        r##"{"a":"","b":"","c":""}"##,
    ] {
        assert!(accepts(&s, doc), "{doc}");
    }
    assert_eq!(
        breaks_at(&s, r##"{"c":"","a"##),
        7,
        "nothing may follow the last property"
    );
    let s = schema(r##"{"type": "object", "properties": {"a": {"type": "string"}}}"##);
    assert_eq!(
        breaks_at(&s, r##"{"a":"",""##),
        7,
        "a comma needs a property after it"
    );
}

#[test]
fn unsupported_schemas_are_errors_naming_where() {
    let cases = [
        (r##"{"type": "string"}"##, "/", "root must be an object"),
        (
            r##"{"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}"##,
            "/properties/n/minimum",
            "`minimum`",
        ),
        (
            r##"{"type": "object", "properties": {"h": {"type": "string", "format": "hostname"}}}"##,
            "/properties/h/format",
            "`hostname`",
        ),
        (
            r##"{"type": "object", "properties": {"p": {"type": "string", "pattern": "(a"}}}"##,
            "/properties/p/pattern",
            "does not compile",
        ),
        (
            r##"{"type": "object", "properties": {"x": {}}}"##,
            "/properties/x",
            "without `type`",
        ),
        (
            r##"{"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"enum": ["a"]}]}}}"##,
            "/properties/x/anyOf",
            "both begin with `\"`",
        ),
        (
            r##"{"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}}"##,
            "/properties/x/$ref",
            "not a definition",
        ),
        (
            r##"{"type": "object", "required": ["y"], "properties": {"x": {"type": "integer"}}}"##,
            "/required",
            "`y`",
        ),
        (
            r##"{"type": "object", "additionalProperties": {"type": "integer"}}"##,
            "/additionalProperties",
            "only `true` or `false`",
        ),
    ];
    for (v, path, msg) in cases {
        let e = Schema::compile_str(v).unwrap_err();
        assert_eq!(e.path, path, "{e}");
        assert!(e.to_string().contains(msg), "{e}");
    }
}

#[test]
fn the_mask_keeps_exactly_the_tokens_that_continue_the_schema() {
    let s = person();
    let texts: Vec<String> = [
        "{", "{\"", "\"name\"", "\"age\"", ":", " \"", "Ann", "\"", "}", "x", "",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    let vocab = Vocab::new(texts.clone());
    let eos = [10u32];
    let kept = |st: &SchemaPrefix| {
        let mut l = vec![0.0f32; texts.len()];
        mask(&mut l, &s, st, &vocab, &eos);
        (0..texts.len())
            .filter(|&i| l[i].is_finite())
            .map(|i| texts[i].as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(&SchemaPrefix::new()), ["{", "{\""]);
    let st = feed(&s, "{").unwrap();
    assert_eq!(kept(&st), ["\"name\"", " \"", "\""]);
    // Inside a string with a length limit (8) every token is walked: one more character
    // fits, "Ann" does not; `{`, `:` and `}` are string content there.
    let st = feed(&s, r##"{"name": "1234567"##).unwrap();
    assert_eq!(kept(&st), ["{", "{\"", ":", " \"", "\"", "}", "x"]);
}

#[test]
fn hostile_schemas_end_in_errors_not_hangs() {
    // A reference to itself, directly and through a union: no node to begin with.
    let e =
        Schema::compile_str(r##"{"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"}"##)
            .unwrap_err();
    assert!(e.to_string().contains("root must be an object"), "{e}");
    let e = Schema::compile_str(
        r##"{"type": "object", "properties": {"x": {"$ref": "#/$defs/U"}},
            "$defs": {"U": {"anyOf": [{"$ref": "#/$defs/U"}, {"type": "null"}]}}}"##,
    )
    .unwrap_err();
    assert_eq!(e.path, "/$defs/U/anyOf", "{e}");
    // Nesting past what a prefix tracks is refused as it is typed, not followed forever.
    let s = schema(
        r##"{"$defs": {"N": {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}}},
            "$ref": "#/$defs/N"}"##,
    );
    let deep = "{\"n\":".repeat(16);
    assert!(feed(&s, &deep).is_ok());
    assert_eq!(breaks_at(&s, &"{\"n\":".repeat(17)), 16 * 5);
    // A pattern whose automaton explodes is refused at its size limit, not built.
    let e = Schema::compile_str(
        r##"{"type": "object", "properties": {"p": {"type": "string", "pattern": "^[ab]*a[ab]{24}$"}}}"##,
    )
    .unwrap_err();
    assert_eq!(e.path, "/properties/p/pattern", "{e}");
    // Many patterns: their automata are bounded together.
    let group = |g: &str| {
        let props: Vec<String> = (0..40)
            .map(|i| format!(r#""{g}{i}": {{"type": "string", "pattern": "^x{i}$"}}"#))
            .collect();
        format!(
            r#"{{"type": "object", "properties": {{{}}}}}"#,
            props.join(",")
        )
    };
    let text = format!(
        r#"{{"type": "object", "properties": {{"a": {}, "b": {}}}}}"#,
        group("a"),
        group("b")
    );
    let e = Schema::compile_str(&text).unwrap_err();
    assert!(
        e.to_string().contains("more patterns than galley builds"),
        "{e}"
    );
    // More tagged branches than a mask holds: refused as an untagged union, not followed.
    let branches: Vec<String> = (0..70)
        .map(|i| format!(r#"{{"type": "object", "required": ["k"], "properties": {{"k": {{"const": {i}}}}}}}"#))
        .collect();
    let e = Schema::compile_str(&format!(
        r#"{{"type": "object", "properties": {{"x": {{"anyOf": [{}]}}}}}}"#,
        branches.join(",")
    ))
    .unwrap_err();
    assert_eq!(e.path, "/properties/x/anyOf", "{e}");
    // A constant too long to match as exact text.
    let long = "a".repeat(5000);
    let e = Schema::compile_str(&format!(
        r#"{{"type": "object", "properties": {{"x": {{"const": "{long}"}}}}}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
    // Not JSON at all.
    assert!(Schema::compile_str("{").is_err());
}

#[test]
fn patterns_and_formats_hold_whole_strings() {
    let s = schema(
        r##"{"type": "object", "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
            "word": {"type": "string", "pattern": "cat"},
            "at": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "mail": {"type": "string", "format": "email"}
        }, "required": ["code", "word", "at", "id", "mail"]}"##,
    );
    let good = r##"{"code":"AB123","word":"concatenate","at":"2026-12-06T05:19:54.5+01:00","id":"123e4567-e89b-12d3-a456-426614174000","mail":"ann.lee@example.org"}"##;
    assert!(accepts(&s, good), "{good}");
    // Each field cut or bent where it stops matching.
    let cases = [
        (r##"{"code":"AB12""##, 13),
        // A character past a complete match (a DFA reports matches a byte late).
        (r##"{"code":"AB1234"##, 14),
        (r##"{"code":"ab"##, 9),
        (r##"{"code":"AB123","word":"dog""##, 27),
        (r##"{"code":"AB123","word":"cat","at":"2026-13"##, 41),
        (
            r##"{"code":"AB123","word":"cat","at":"2026-12-06T05:19:54Z","id":"123g"##,
            66,
        ),
        (
            r##"{"code":"AB123","word":"cat","at":"2026-12-06T05:19:54Z","id":"123e4567-e89b-12d3-a456-426614174000","mail":"ann@example""##,
            120,
        ),
    ];
    for (text, at) in cases {
        assert_eq!(breaks_at(&s, text), at, "{text}");
    }
    // Escapes reach the pattern unescaped.
    let s = schema(
        r##"{"type": "object", "properties": {"q": {"type": "string", "pattern": "^a\"b$"}}}"##,
    );
    assert!(accepts(&s, r##"{"q":"a\"b"}"##));
    assert_eq!(
        breaks_at(&s, r##"{"q":"a\u0022"##),
        8,
        "no \\u escapes where a pattern holds"
    );
}

#[test]
fn objects_told_apart_by_a_first_constant_property_are_a_tagged_union() {
    // As pydantic writes `pet: Union[Cat, Dog] = Field(discriminator="kind")`.
    let s = schema(
        r##"{"type": "object", "required": ["pet"], "properties": {
            "pet": {"oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}],
                    "discriminator": {"propertyName": "kind"}}},
          "$defs": {
            "Cat": {"type": "object", "required": ["kind", "meows"],
                    "properties": {"kind": {"const": "cat", "type": "string"}, "meows": {"type": "integer"}}},
            "Dog": {"type": "object", "required": ["kind", "barks"],
                    "properties": {"kind": {"enum": ["dog"]}, "barks": {"type": "boolean"}}}}}"##,
    );
    assert!(accepts(&s, r##"{"pet":{"kind":"cat","meows":3}}"##));
    assert!(accepts(&s, r##"{"pet": {"kind": "dog", "barks": true}}"##));
    // A cat's properties after a cat's tag, a tag of neither.
    assert_eq!(breaks_at(&s, r##"{"pet":{"kind":"cat","barks""##), 22);
    assert_eq!(breaks_at(&s, r##"{"pet":{"kind":"bird""##), 16);
    assert_eq!(breaks_at(&s, r##"{"pet":{"meows""##), 9);
    // Objects without such a tag first are still refused, saying what galley needs.
    let e = Schema::compile_str(
        r##"{"type": "object", "properties": {"x": {"anyOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {"type": "object", "properties": {"b": {"type": "integer"}}}]}}}"##,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("a first property they all have"),
        "{e}"
    );
}

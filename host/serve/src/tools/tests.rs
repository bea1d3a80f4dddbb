use super::*;

const HERMES: &str = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}<tools>{{ tools | tojson }}</tools> answer in <tool_call>{% endif %}";

fn hermes() -> ChatTemplate {
    ChatTemplate::new(HERMES, "hermes.jinja", "", "").unwrap()
}

const WEATHER: &str = r#"{"type": "function", "function": {"name": "get_weather", "parameters":
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
     "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"]}}}"#;
const ADD: &str = r##"{"type": "function", "function": {"name": "add", "parameters":
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}, "b": {"$ref": "#/$defs/n"}},
     "required": ["a", "b"], "$defs": {"n": {"type": "integer"}}}}}"##;

fn body(extra: &str) -> Vec<u8> {
    format!(r#"{{"model": "m", "messages": [], "tools": [{WEATHER}, {ADD}] {extra}}}"#).into_bytes()
}

fn read_with(t: Option<&ChatTemplate>, f: Option<ToolFormat>, b: &[u8]) -> Result<Tools, ApiError> {
    read(t, f, b, false)
}

/// Whether `guide` takes `text` whole and is done after it.
fn takes(guide: &Guide, text: &str) -> bool {
    let mut g = guide.clone();
    g.advance(text) && g.done()
}

#[test]
fn bad_tools_and_choices_are_refused_naming_the_key() {
    let t = hermes();
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"tools": [{"type": "retrieval"}]}"#,
            "tools[0].type",
            "type `function`",
        ),
        (
            r#"{"tools": [{"type": "function"}]}"#,
            "tools[0].function",
            "`function` is missing",
        ),
        (
            r#"{"tools": [{"type": "function", "function": {"name": "get weather"}}]}"#,
            "tools[0].function.name",
            "1 to 64 letters",
        ),
        (
            r#"{"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}"#,
            "tools[0].function.parameters",
            "JSON schema object",
        ),
        (
            r#"{"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}"#,
            "tools[1].function.name",
            "given twice",
        ),
        (r#"{"tool_choice": "auto"}"#, "tool_choice", "needs tools"),
        (
            r#"{"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "any"}"#,
            "tool_choice",
            "`any`",
        ),
        (
            r#"{"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}"#,
            "tool_choice",
            "`g`, which is not among the tools",
        ),
        (
            r#"{"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}}}], "tool_choice": "required"}"#,
            "tools",
            "tool `f`: its parameters: ",
        ),
    ];
    for (b, param, says) in cases {
        let e = read_with(Some(&t), Some(ToolFormat::Hermes), b.as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{b} accepted"));
        assert_eq!(e.param.as_deref(), Some(*param), "{b}");
        assert!(e.message.contains(says), "{b}: {}", e.message);
    }
    // Tools with response_format, unless no call is wanted.
    let b = body("");
    let e = read(Some(&t), Some(ToolFormat::Hermes), &b, true)
        .err()
        .unwrap();
    assert_eq!(e.param.as_deref(), Some("response_format"));
    assert!(
        read(
            Some(&t),
            Some(ToolFormat::Hermes),
            &body(r#", "tool_choice": "none""#),
            true
        )
        .is_ok()
    );
}

#[test]
fn auto_needs_a_template_that_shows_tools_and_a_format_galley_reads() {
    let plain = ChatTemplate::new("{{ messages[0].content }}", "plain.jinja", "", "").unwrap();
    let e = read_with(Some(&plain), None, &body("")).err().unwrap();
    assert!(
        e.message.contains("plain.jinja") && e.message.contains("--chat-template"),
        "{}",
        e.message
    );
    let shows = ChatTemplate::new("{{ tools }}", "odd.jinja", "", "").unwrap();
    let e = read_with(Some(&shows), None, &body("")).err().unwrap();
    assert!(e.message.contains("--tool-call-parser"), "{}", e.message);
    // A forced call needs neither: it is held to one bare JSON object.
    let forced = read_with(Some(&plain), None, &body(r#", "tool_choice": "required""#)).unwrap();
    let plan = forced.plan.unwrap();
    assert_eq!((plan.format, plan.forced), (ToolFormat::Json, true));
    // Auto on a template that shows them: calls are read, nothing is forced.
    let t = hermes();
    let auto = read_with(Some(&t), Some(ToolFormat::Hermes), &body("")).unwrap();
    let plan = auto.plan.unwrap();
    assert_eq!(
        (plan.format, plan.forced, plan.parallel),
        (ToolFormat::Hermes, false, true)
    );
    assert!(auto.guide.is_none());
    // The tools reach the template in the order sent.
    let list = auto.list.unwrap();
    let out = t.render_turns(&[], false, Some(&list)).unwrap();
    assert!(out.contains(r#"{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city""#), "{out}");
    let none = read_with(
        Some(&t),
        Some(ToolFormat::Hermes),
        &body(r#", "tool_choice": "none""#),
    )
    .unwrap();
    assert!(none.plan.is_none() && none.guide.is_none() && none.list.is_some());
}

#[test]
fn a_forced_call_is_held_to_the_tools_schemas() {
    let t = hermes();
    let req = read_with(
        Some(&t),
        Some(ToolFormat::Hermes),
        &body(r#", "tool_choice": "required""#),
    )
    .unwrap();
    let g = req.guide.unwrap();
    assert!(takes(
        &g,
        r#"{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}"#
    ));
    // $refs inside a tool's schema point into it still.
    assert!(takes(&g, r#"{"name":"add","arguments":{"a":1,"b":-2}}"#));
    for bad in [
        r#"{"name":"sub""#,
        r#"{"name":"add","arguments":{"a":"1""#,
        r#"{"name":"get_weather","arguments":{"city":"Paris","unit":"k""#,
        r#"{"arguments""#,
    ] {
        assert!(!g.clone().advance(bad), "{bad}");
    }
    let named = read_with(
        Some(&t),
        Some(ToolFormat::Hermes),
        &body(r#", "tool_choice": {"type": "function", "function": {"name": "add"}}"#),
    )
    .unwrap();
    let g = named.guide.unwrap();
    assert!(!named.plan.unwrap().parallel);
    assert!(takes(&g, r#"{"name":"add","arguments":{"a":1,"b":2}}"#));
    assert!(!g.clone().advance(r#"{"name":"get_weather""#));
    // Llama 3 writes `parameters`; Mistral a list, one call unless parallel.
    let l = read_with(
        Some(&t),
        Some(ToolFormat::Llama3Json),
        &body(r#", "tool_choice": "required""#),
    )
    .unwrap();
    assert!(takes(
        &l.guide.unwrap(),
        r#"{"name":"add","parameters":{"a":1,"b":2}}"#
    ));
    let m = read_with(
        Some(&t),
        Some(ToolFormat::Mistral),
        &body(r#", "tool_choice": "required", "parallel_tool_calls": false"#),
    )
    .unwrap();
    let g = m.guide.unwrap();
    assert!(takes(&g, r#"[{"name":"add","arguments":{"a":1,"b":2}}]"#));
    assert!(
        !g.clone()
            .advance(r#"[{"name":"add","arguments":{"a":1,"b":2}},"#)
    );
}

#[test]
fn calls_are_written_as_openai_does_with_ids_the_format_accepts() {
    let plan = ToolPlan {
        format: ToolFormat::Hermes,
        forced: false,
        parallel: false,
    };
    let text = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>";
    let p = parse(&plan, text, None);
    assert_eq!(p.calls.len(), 1, "one call unless parallel");
    let v = calls_json(&plan, &p.calls, 1);
    assert_eq!(v[0]["type"], "function");
    assert_eq!(v[0]["function"]["name"], "add");
    assert_eq!(v[0]["function"]["arguments"], r#"{"a": 1, "b": 2}"#);
    assert!(v[0]["id"].as_str().unwrap().starts_with("call_"));
    assert!(v[0].get("index").is_none());
}

#[test]
fn more_tools_than_a_forced_call_can_tell_apart_are_refused_plainly() {
    let t = hermes();
    let many: Vec<String> = (0..70)
        .map(|i| format!(r#"{{"type": "function", "function": {{"name": "f{i}"}}}}"#))
        .collect();
    let b = format!(
        r#"{{"tools": [{}], "tool_choice": "required"}}"#,
        many.join(", ")
    );
    let e = read_with(Some(&t), Some(ToolFormat::Hermes), b.as_bytes())
        .err()
        .unwrap();
    assert_eq!(e.param.as_deref(), Some("tool_choice"));
    assert!(e.message.contains("64"), "{}", e.message);
    // Auto reads calls from text: any number of tools is shown.
    let b = format!(r#"{{"tools": [{}]}}"#, many.join(", "));
    assert!(read_with(Some(&t), Some(ToolFormat::Hermes), b.as_bytes()).is_ok());
}

use super::*;

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments: arguments.into(),
    }
}

#[test]
fn hermes_blocks_with_text_around_them_and_no_close_at_the_end() {
    // Qwen 2.5's parallel calls, as its template shows them.
    let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let p = parse(ToolFormat::Hermes, text);
    assert_eq!(p.content.as_deref(), Some("Let me look."));
    assert_eq!(
        p.calls,
        vec![
            call("get_weather", r#"{"city": "Paris", "unit": "c"}"#),
            call("get_time", "{}")
        ]
    );
    // A stop token came before `</tool_call>`; arguments written as a JSON string.
    let p = parse(
        ToolFormat::Hermes,
        "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}\n",
    );
    assert_eq!((p.content, p.calls), (None, vec![call("f", r#"{"x": 1}"#)]));
    // Calls without their closes, one after another.
    let p = parse(
        ToolFormat::Hermes,
        "<tool_call>{\"name\": \"f\", \"arguments\": {}}<tool_call>{\"name\": \"g\", \"arguments\": {}}",
    );
    assert_eq!(p.calls, vec![call("f", "{}"), call("g", "{}")]);
}

#[test]
fn a_call_that_does_not_parse_leaves_the_whole_answer_as_text() {
    for (f, text) in [
        (
            ToolFormat::Hermes,
            "ok <tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": }\n</tool_call>",
        ),
        (
            ToolFormat::Hermes,
            "<tool_call>{\"arguments\": {}}</tool_call>",
        ),
        (
            ToolFormat::Llama3Json,
            "{\"name\": \"f\", \"parameters\": {\"x\": 1}",
        ),
        (
            ToolFormat::Mistral,
            "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}",
        ),
        (ToolFormat::Llama3Json, "The answer is {x}."),
    ] {
        let p = parse(f, text);
        assert_eq!(
            (p.content.as_deref(), p.calls.len()),
            (Some(text), 0),
            "{text}"
        );
    }
    assert_eq!(
        parse(ToolFormat::Hermes, "plain").content.as_deref(),
        Some("plain")
    );
}

#[test]
fn llama3_objects_with_python_tag_or_semicolons_and_mistral_lists() {
    let p = parse(
        ToolFormat::Llama3Json,
        "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
    );
    assert_eq!(p.calls, vec![call("get_weather", r#"{"city": "Paris"}"#)]);
    let p = parse(
        ToolFormat::Llama3Json,
        " {\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"x\": [1, 2]}}",
    );
    assert_eq!(
        p.calls,
        vec![call("a", "{}"), call("b", r#"{"x": [1, 2]}"#)]
    );
    let p = parse(
        ToolFormat::Mistral,
        "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"t\", \"arguments\": {}}]",
    );
    assert_eq!(p.content, None);
    assert_eq!(
        p.calls,
        vec![call("get_weather", r#"{"city": "Paris"}"#), call("t", "{}")]
    );
    // Qwen3-Coder's XML: values as written, JSON where they read as JSON (not a string).
    let p = parse(
        ToolFormat::QwenXml,
        "Ok.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis, \"FR\"\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=opts>\n{\"a\": [1]}\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=t>\n</function>\n</tool_call>",
    );
    assert_eq!(p.content.as_deref(), Some("Ok."));
    assert_eq!(
        p.calls,
        vec![
            call(
                "get_weather",
                r#"{"city":"Paris, \"FR\"","days":3,"opts":{"a":[1]}}"#
            ),
            call("t", "{}")
        ]
    );
    // DeepSeek V3.1's and Kimi K2's markers around a name and its arguments.
    let p = parse(
        ToolFormat::DeepSeekV31,
        "Ok.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{\"a\": 1}<｜tool▁call▁end｜><｜tool▁call▁begin｜>g<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    );
    assert_eq!(
        (p.content.as_deref(), p.calls),
        (Some("Ok."), vec![call("f", r#"{"a": 1}"#), call("g", "{}")])
    );
    let p = parse(
        ToolFormat::KimiK2,
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Paris\"}<|tool_call_end|><|tool_calls_section_end|>",
    );
    assert_eq!(
        (p.content, p.calls),
        (None, vec![call("get_weather", r#"{"city": "Paris"}"#)])
    );
    // Mistral's later form: a name, an id at times, the arguments; a call after another.
    let p = parse(
        ToolFormat::MistralArgs,
        "Sure.[TOOL_CALLS]get_weather[CALL_ID]abcdefghi[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]t[ARGS]{}",
    );
    assert_eq!(p.content.as_deref(), Some("Sure."));
    assert_eq!(
        p.calls,
        vec![call("get_weather", r#"{"city": "Paris"}"#), call("t", "{}")]
    );
    // Without the marker (a tokenizer that drops it), a list at the start is a call list.
    let p = parse(
        ToolFormat::Mistral,
        "[{\"name\": \"t\", \"arguments\": {}}]",
    );
    assert_eq!(p.calls, vec![call("t", "{}")]);
}

#[test]
fn forced_calls_are_the_json_after_the_prefix() {
    let p = parse_forced(
        ToolFormat::Hermes,
        "{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>",
    );
    assert_eq!(p.calls, vec![call("f", r#"{"a": 1}"#)]);
    let p = parse_forced(
        ToolFormat::Mistral,
        "[{\"name\": \"f\", \"arguments\": {}}]",
    );
    assert_eq!(p.calls, vec![call("f", "{}")]);
    let p = parse_forced(ToolFormat::Json, "{\"name\": \"f\", \"argu");
    assert_eq!(
        (p.content.as_deref(), p.calls.len()),
        (Some("{\"name\": \"f\", \"argu"), 0)
    );
}

/// Feeds `text` a character at a time: the content passed on, the end, and each call's
/// name and arguments as streamed.
fn stream_all(
    f: ToolFormat,
    forced: bool,
    text: &str,
) -> (String, Finished, Vec<(String, String)>) {
    let mut s = CallStream::new(f, forced);
    let mut sent = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for c in text.chars() {
        let p = s.push(&c.to_string());
        sent.push_str(&p.content);
        for d in p.calls {
            if let Some(n) = d.name {
                assert_eq!(d.index, calls.len(), "calls begin in order");
                calls.push((n, String::new()));
            }
            calls[d.index].1.push_str(&d.arguments);
        }
    }
    (sent, s.finish(), calls)
}

fn stream(f: ToolFormat, text: &str) -> (String, Parsed) {
    let (sent, end, _) = stream_all(f, false, text);
    (sent, end.parsed)
}

#[test]
fn streams_pass_text_on_and_hold_only_what_may_open_a_call() {
    let text =
        "Let me look. <tool_call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"é\"}}\n</tool_call>";
    let (sent, end) = stream(ToolFormat::Hermes, text);
    assert_eq!(sent, "Let me look. ");
    assert_eq!(
        (end.content, end.calls),
        (None, vec![call("f", r#"{"q": "é"}"#)])
    );
    // A `<tool` that never becomes a call is passed on once it cannot.
    let (sent, end) = stream(ToolFormat::Hermes, "a <tool is here <tool");
    assert_eq!(sent, "a <tool is here ");
    assert_eq!(
        (end.content.as_deref(), end.calls.len()),
        (Some("<tool"), 0)
    );
    // Llama 3: a call only opens an answer; blanks first are held until the text decides.
    let (sent, end) = stream(
        ToolFormat::Llama3Json,
        "  {\"name\": \"f\", \"parameters\": {}}",
    );
    assert_eq!((sent.as_str(), end.calls), ("", vec![call("f", "{}")]));
    let (sent, end) = stream(ToolFormat::Llama3Json, "  It is {warm}.");
    assert_eq!((sent.as_str(), end.content), ("  It is {warm}.", None));
    // A call that does not parse comes back as text at the end.
    let (sent, end) = stream(ToolFormat::Hermes, "x<tool_call>{oops}");
    assert_eq!(
        (sent.as_str(), end.content.as_deref()),
        ("x", Some("<tool_call>{oops}"))
    );
    let (sent, end) = stream(
        ToolFormat::Mistral,
        "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}]",
    );
    assert_eq!((sent.as_str(), end.calls), ("", vec![call("f", "{}")]));
}

#[test]
fn calls_stream_their_name_then_their_arguments_piece_by_piece() {
    let text = "Sure.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris {x}\", \"n\": [1, {\"a\": \"}\"}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"t\", \"arguments\": {}}\n</tool_call>";
    let (sent, end, calls) = stream_all(ToolFormat::Hermes, false, text);
    assert_eq!(sent, "Sure.");
    let want: Vec<(String, String)> = end
        .parsed
        .calls
        .iter()
        .map(|c| (c.name.clone(), c.arguments.clone()))
        .collect();
    assert_eq!(calls, want, "the stream's calls are the parsed ones");
    assert_eq!(calls[0].1, r#"{"city": "Paris {x}", "n": [1, {"a": "}"}]}"#);
    assert_eq!(
        (end.owed(0), end.owed(1)),
        (Some(String::new()), Some(String::new()))
    );
    // Llama 3's calls joined by `;`; a forced call from its first token.
    let (_, end, calls) = stream_all(
        ToolFormat::Llama3Json,
        false,
        "{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}",
    );
    assert_eq!(
        calls,
        [
            ("a".into(), r#"{"x": 1}"#.into()),
            ("b".into(), "{}".into())
        ]
    );
    assert_eq!(end.parsed.calls.len(), 2);
    let (_, end, calls) = stream_all(
        ToolFormat::Hermes,
        true,
        "{\"name\": \"f\", \"arguments\": {\"k\": true}}",
    );
    assert_eq!(calls, [("f".into(), r#"{"k": true}"#.into())]);
    assert_eq!(end.owed(0), Some(String::new()));
    // Written otherwise (arguments first, arguments as text, Mistral's list): whole at the
    // end, nothing streamed.
    for (f, text) in [
        (
            ToolFormat::Hermes,
            "<tool_call>{\"arguments\": {}, \"name\": \"f\"}</tool_call>",
        ),
        (
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"f\", \"arguments\": \"{}\"}</tool_call>",
        ),
        (
            ToolFormat::Mistral,
            "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}]",
        ),
    ] {
        let (_, end, calls) = stream_all(f, false, text);
        assert!(calls.is_empty(), "{text}: {calls:?}");
        assert_eq!((end.parsed.calls.len(), end.owed(0)), (1, None), "{text}");
    }
}

#[test]
fn formats_are_found_by_rendering_a_call_and_ids_fit_them() {
    let of = |calls: &str| {
        let src = format!(
            "{{% for m in messages %}}{{% if m.tool_calls %}}{calls}{{% else %}}{{{{ m.content }}}}{{% endif %}}|{{% endfor %}}"
        );
        ToolFormat::of_template(&crate::ChatTemplate::new(&src, "t", "", "").unwrap())
    };
    let f = "m.tool_calls[0].function";
    assert_eq!(
        of(&format!(
            "<tool_call>{{\"name\": \"{{{{ {f}.name }}}}\", \"arguments\": {{{{ {f}.arguments | tojson }}}}}}</tool_call>"
        )),
        Some(ToolFormat::Hermes)
    );
    assert_eq!(
        of(&format!("[TOOL_CALLS][{{{{ {f} | tojson }}}}]")),
        Some(ToolFormat::Mistral)
    );
    assert_eq!(
        of(&format!(
            "{{\"name\": \"{{{{ {f}.name }}}}\", \"parameters\": {{{{ {f}.arguments | tojson }}}}}}"
        )),
        Some(ToolFormat::Llama3Json)
    );
    assert_eq!(
        of(&format!("{{{{ {f} | tojson }}}}")),
        Some(ToolFormat::Json)
    );
    // Tags galley does not read (Qwen3-Coder's XML), or no call at all: none.
    assert_eq!(
        of(&format!(
            "<tool_call><function={{{{ {f}.name }}}}></function></tool_call>"
        )),
        None
    );
    assert_eq!(of(""), None);
    let id = ToolFormat::Mistral.call_id(7);
    assert!(
        id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    let a = ToolFormat::Hermes.call_id(7);
    assert!(a.starts_with("call_") && a.len() == 29 && a != ToolFormat::Hermes.call_id(8));
    for f in [
        ToolFormat::Hermes,
        ToolFormat::Llama3Json,
        ToolFormat::Mistral,
        ToolFormat::Json,
    ] {
        assert_eq!(ToolFormat::from_name(f.name()), Some(f));
    }
}

/// Hostile text: fragments of every tag and JSON token, in random orders and random pieces
/// (cut anywhere between characters), through every reader: nothing panics, and a stream's
/// text passed on plus what its end gives back holds everything it was given.
#[test]
fn any_text_in_any_pieces_is_read_without_panicking_or_losing_text() {
    const BITS: &[&str] = &[
        "<｜tool▁call▁begin｜>",
        "<｜tool▁sep｜>",
        "<|tool_call_begin|>",
        "<|tool_call_argument_begin|>",
        "functions.",
        "<tool_call>",
        "</tool_call>",
        "<tool_",
        "[TOOL_CALLS]",
        "[ARGS]",
        "[CALL_ID]",
        "<|python_tag|>",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "\\",
        ":",
        ",",
        ";",
        " ",
        "\n",
        "é",
        "😀",
        "\"name\"",
        "\"arguments\"",
        "\"parameters\"",
        "\"f\"",
        "1",
        "true",
        "<think>",
        "</think>",
        "x",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let formats = [
        ToolFormat::Hermes,
        ToolFormat::Llama3Json,
        ToolFormat::Mistral,
        ToolFormat::MistralArgs,
        ToolFormat::QwenXml,
        ToolFormat::DeepSeekV31,
        ToolFormat::KimiK2,
        ToolFormat::Json,
    ];
    for _ in 0..3000 {
        let text: String = (0..next(24)).map(|_| BITS[next(BITS.len())]).collect();
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < chars.len() {
            let n = 1 + next(6);
            pieces.push(
                chars[at..(at + n).min(chars.len())]
                    .iter()
                    .collect::<String>(),
            );
            at += n;
        }
        for f in formats {
            let whole = parse(f, &text);
            assert!(whole.content.is_some() || !whole.calls.is_empty() || text.is_empty());
            let _ = parse_forced(f, &text);
            for forced in [false, true] {
                let mut s = CallStream::new(f, forced);
                let mut sent = String::new();
                for p in &pieces {
                    sent.push_str(&s.push(p).content);
                }
                let end = s.finish();
                let _ = end.owed(0);
                if end.parsed.calls.is_empty() && !forced {
                    let kept = end.parsed.content.unwrap_or_default();
                    assert_eq!(format!("{sent}{kept}"), text, "{f:?}: {pieces:?}");
                }
            }
        }
        let mut t = crate::reasoning::ThinkStream::new(next(2) == 0);
        for p in &pieces {
            let _ = t.push(p);
        }
        let _ = t.finish();
        let _ = crate::reasoning::split(&text, true);
    }
}

/// Qwen3-Coder's XML values read by their tools' schemas, as vLLM's qwen3_coder parser reads
/// them: a string parameter keeps "1.10", "007" and "true" as written; numbers, booleans,
/// objects and arrays are typed where the schema asks for them; text that is not of its
/// type, and parameters the schema does not name, fall back to the JSON guess.
#[test]
fn qwen_xml_values_are_typed_by_the_tools_schemas() {
    let tools: crate::json_schema::Json = serde_json::from_str(
        r#"[{"type": "function", "function": {"name": "release", "parameters": {"type": "object", "properties": {
            "version": {"type": "string"}, "build": {"type": ["string", "null"]}, "flag": {"type": "string"},
            "count": {"type": "integer"}, "ratio": {"type": "number"}, "dry": {"type": "boolean"},
            "tags": {"type": "array"}, "meta": {"type": "object"}, "odd": {"type": "integer"}}}}}]"#,
    )
    .unwrap();
    let p = |name: &str, value: &str| format!("<parameter={name}>\n{value}\n</parameter>\n");
    let text = format!(
        "<tool_call>\n<function=release>\n{}{}{}{}{}{}{}{}{}{}</function>\n</tool_call>",
        p("version", "1.10"),
        p("build", "007"),
        p("flag", "true"),
        p("count", "3"),
        p("ratio", "0.5"),
        p("dry", "False"),
        p("tags", "[\"a\", \"b\"]"),
        p("meta", "{\"k\": 1}"),
        p("odd", "many"),
        p("unknown", "12"),
    );
    let typed = parse_with_tools(ToolFormat::QwenXml, &text, Some(&tools));
    assert_eq!(
        typed.calls,
        vec![call(
            "release",
            r#"{"version":"1.10","build":"007","flag":"true","count":3,"ratio":0.5,"dry":false,"tags":["a","b"],"meta":{"k":1},"odd":"many","unknown":12}"#
        )]
    );
    // Without the tools, the guess: "1.10" reads as the number 1.1.
    let guessed = parse(ToolFormat::QwenXml, &text);
    assert!(
        guessed.calls[0].arguments.contains(r#""version":1.1"#),
        "{:?}",
        guessed.calls
    );
    // A streamed answer ends with the same typed calls.
    let mut st = CallStream::new(ToolFormat::QwenXml, false).with_tools(Some(tools.clone()));
    for piece in text.as_bytes().chunks(7) {
        st.push(std::str::from_utf8(piece).unwrap());
    }
    assert_eq!(st.finish().parsed.calls, typed.calls);
    // Other formats are JSON and read the same either way.
    let hermes = "<tool_call>\n{\"name\": \"release\", \"arguments\": {\"version\": \"1.10\"}}\n</tool_call>";
    assert_eq!(
        parse_with_tools(ToolFormat::Hermes, hermes, Some(&tools)),
        parse(ToolFormat::Hermes, hermes)
    );
}

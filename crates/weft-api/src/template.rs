//! The part of Go's `text/template` that `weave report -f` scripts use, over the report's
//! JSON: `{{.A.B}}`, `{{.}}`, string literals, `{{range .X}}…{{else}}…{{end}}`,
//! `{{if .X}}…{{else}}…{{end}}`, `{{with .X}}…{{end}}`, and the functions `json`, `len` and
//! `printf` (verbs `%s %d %v %q %%`). `{{-` and `-}}` trim the whitespace next to them.
//! Values print as Go prints them: `true`, `[a b]`, `map[k:v]`, `<no value>` for a missing
//! field.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Arg {
    /// `.A.B` (empty path: `.`).
    Field(Vec<String>),
    Str(String),
    Num(f64),
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Arg(Arg),
    Call(String, Vec<Arg>),
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    Print(Expr),
    Range(Expr, Vec<Node>, Vec<Node>),
    If(Expr, Vec<Node>, Vec<Node>),
    With(Expr, Vec<Node>, Vec<Node>),
}

/// Renders `template` over `data`; a malformed template or an unknown function is an error
/// that names it.
pub fn render(template: &str, data: &Value) -> Result<String, TemplateError> {
    let tokens = lex(template)?;
    let mut pos = 0;
    let (nodes, stop) = parse(&tokens, &mut pos, 0)?;
    if let Some(s) = stop {
        return Err(TemplateError(format!("unexpected {{{{{s}}}}}")));
    }
    let mut out = String::new();
    exec(&nodes, data, &mut out)?;
    Ok(out)
}

/// A template that cannot be rendered, and why (in the words of Go's templates, which
/// `weave report -f` used).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("template: {0}")]
pub struct TemplateError(String);

#[derive(Debug)]
enum Token {
    Text(String),
    Action(String),
}

fn lex(t: &str) -> Result<Vec<Token>, TemplateError> {
    let mut out: Vec<Token> = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find("{{") {
        let mut text = rest[..open].to_string();
        let after = &rest[open + 2..];
        let (trim_left, after) = match after.strip_prefix("- ") {
            Some(a) => (true, a),
            None => (false, after),
        };
        let close = after
            .find("}}")
            .ok_or_else(|| TemplateError("unclosed action (missing }})".into()))?;
        let mut inner = &after[..close];
        let trim_right = inner.ends_with(" -");
        if trim_right {
            inner = &inner[..inner.len() - 2];
        }
        if trim_left {
            text = text.trim_end().to_string();
        }
        if !text.is_empty() {
            out.push(Token::Text(text));
        }
        out.push(Token::Action(inner.trim().to_string()));
        rest = &after[close + 2..];
        if trim_right {
            rest = rest.trim_start();
        }
    }
    if !rest.is_empty() {
        out.push(Token::Text(rest.to_string()));
    }
    Ok(out)
}

fn words(action: &str) -> Result<Vec<String>, TemplateError> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::from("\"");
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(o) => s.push(o),
                        None => break,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    o => s.push(o),
                }
            }
            if !closed {
                return Err(TemplateError(format!(
                    "unterminated string in {{{{{action}}}}}"
                )));
            }
            out.push(s);
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

fn arg(w: &str) -> Result<Arg, TemplateError> {
    if let Some(s) = w.strip_prefix('"') {
        return Ok(Arg::Str(s.to_string()));
    }
    if w == "." {
        return Ok(Arg::Field(Vec::new()));
    }
    if let Some(path) = w.strip_prefix('.') {
        return Ok(Arg::Field(path.split('.').map(str::to_string).collect()));
    }
    w.parse()
        .map(Arg::Num)
        .map_err(|_| TemplateError(format!("unknown argument {w:?}")))
}

fn expr(ws: &[String]) -> Result<Expr, TemplateError> {
    match ws {
        [] => Err(TemplateError("empty action".into())),
        [one] => arg(one).map(Expr::Arg),
        [f, rest @ ..] if matches!(f.as_str(), "json" | "len" | "printf") => Ok(Expr::Call(
            f.clone(),
            rest.iter().map(|w| arg(w)).collect::<Result<_, _>>()?,
        )),
        [f, ..] => Err(TemplateError(format!("function {f:?} not defined"))),
    }
}

/// How deeply range/if/with may nest: parsing and running recurse, and a template can come
/// from any local API client.
const MAX_DEPTH: usize = 64;

/// Parses until `{{end}}` or `{{else}}` (returned as the stop word) or the end.
fn parse(
    tokens: &[Token],
    pos: &mut usize,
    depth: usize,
) -> Result<(Vec<Node>, Option<String>), TemplateError> {
    if depth > MAX_DEPTH {
        return Err(TemplateError(format!("nested more than {MAX_DEPTH} deep")));
    }
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        let t = &tokens[*pos];
        *pos += 1;
        match t {
            Token::Text(s) => nodes.push(Node::Text(s.clone())),
            Token::Action(a) => {
                let ws = words(a)?;
                match ws.first().map(String::as_str) {
                    Some("end") | Some("else") => return Ok((nodes, Some(ws[0].clone()))),
                    Some(kw @ ("range" | "if" | "with")) => {
                        let e = expr(&ws[1..])?;
                        let (body, stop) = parse(tokens, pos, depth + 1)?;
                        let otherwise = match stop.as_deref() {
                            Some("end") => Vec::new(),
                            Some("else") => match parse(tokens, pos, depth + 1)? {
                                (o, Some(s)) if s == "end" => o,
                                _ => {
                                    return Err(TemplateError(format!(
                                        "{{{{{kw}}}}} without {{{{end}}}}"
                                    )));
                                }
                            },
                            _ => {
                                return Err(TemplateError(format!(
                                    "{{{{{kw}}}}} without {{{{end}}}}"
                                )));
                            }
                        };
                        nodes.push(match kw {
                            "range" => Node::Range(e, body, otherwise),
                            "if" => Node::If(e, body, otherwise),
                            _ => Node::With(e, body, otherwise),
                        });
                    }
                    Some(_) => nodes.push(Node::Print(expr(&ws)?)),
                    None => return Err(TemplateError("empty action".into())),
                }
            }
        }
    }
    Ok((nodes, None))
}

fn lookup(path: &[String], dot: &Value) -> Value {
    let mut v = dot;
    for p in path {
        match v.get(p.as_str()) {
            Some(x) => v = x,
            None => return Value::Null,
        }
    }
    v.clone()
}

fn eval_arg(a: &Arg, dot: &Value) -> Value {
    match a {
        Arg::Field(p) => lookup(p, dot),
        Arg::Str(s) => Value::String(s.clone()),
        Arg::Num(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
    }
}

fn eval(e: &Expr, dot: &Value) -> Result<Value, TemplateError> {
    match e {
        Expr::Arg(a) => Ok(eval_arg(a, dot)),
        Expr::Call(f, args) => {
            let vals: Vec<Value> = args.iter().map(|a| eval_arg(a, dot)).collect();
            match f.as_str() {
                "json" => match vals.as_slice() {
                    [v] => Ok(Value::String(v.to_string())),
                    _ => Err(TemplateError("json takes one argument".into())),
                },
                "len" => match vals.as_slice() {
                    [Value::Array(a)] => Ok(a.len().into()),
                    [Value::Object(o)] => Ok(o.len().into()),
                    [Value::String(s)] => Ok(s.len().into()),
                    _ => Err(TemplateError("len of a value without a length".into())),
                },
                _ => match vals.split_first() {
                    Some((Value::String(fmt), rest)) => printf(fmt, rest).map(Value::String),
                    _ => Err(TemplateError("printf needs a format string".into())),
                },
            }
        }
    }
}

fn printf(fmt: &str, args: &[Value]) -> Result<String, TemplateError> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(v @ ('s' | 'd' | 'v' | 'q')) => {
                let Some(a) = args.next() else {
                    out.push_str(&format!("%!{v}(MISSING)"));
                    continue;
                };
                if v == 'q' {
                    out.push_str(&Value::String(go_string(a)).to_string());
                } else {
                    out.push_str(&go_string(a));
                }
            }
            Some(o) => return Err(TemplateError(format!("printf verb %{o} is not supported"))),
            None => out.push('%'),
        }
    }
    Ok(out)
}

/// Go's `fmt` rendering of a value.
fn go_string(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(go_string).collect::<Vec<_>>().join(" ")
        ),
        Value::Object(o) => format!(
            "map[{}]",
            o.iter()
                .map(|(k, v)| format!("{k}:{}", go_string(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

/// Go's truth: false, 0, nil and empty things are false.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn exec(nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), TemplateError> {
    for n in nodes {
        match n {
            Node::Text(s) => out.push_str(s),
            Node::Print(e) => out.push_str(&go_string(&eval(e, dot)?)),
            Node::If(e, yes, no) => {
                let branch = if truthy(&eval(e, dot)?) { yes } else { no };
                exec(branch, dot, out)?;
            }
            Node::With(e, yes, no) => {
                let v = eval(e, dot)?;
                if truthy(&v) {
                    exec(yes, &v, out)?;
                } else {
                    exec(no, dot, out)?;
                }
            }
            Node::Range(e, body, otherwise) => {
                let items: Vec<Value> = match eval(e, dot)? {
                    Value::Array(a) => a,
                    Value::Object(o) => o.into_iter().map(|(_, v)| v).collect(),
                    Value::Null => Vec::new(),
                    other => {
                        return Err(TemplateError(format!("range over {}", go_string(&other))));
                    }
                };
                if items.is_empty() {
                    exec(otherwise, dot, out)?;
                }
                for item in &items {
                    exec(body, item, out)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Value {
        json!({
            "Version": "0.1.0",
            "Ready": true,
            "Router": {"Name": "aa:bb", "Peers": [
                {"NickName": "host1", "Connections": [{"Address": "10.0.0.2:6783"}]},
                {"NickName": "host2", "Connections": []}
            ]},
            "IPAM": {"RangeNumIPs": 1048576, "ActiveIPs": 3},
            "DNS": {"Entries": [
                {"Hostname": "a.weave.local.", "Address": "10.32.0.1"},
                {"Hostname": "b.weave.local.", "Address": "10.32.0.2"}
            ]}
        })
    }

    fn r(t: &str) -> String {
        render(t, &data()).unwrap()
    }

    #[test]
    fn fields_and_literals() {
        assert_eq!(r("{{.Version}}"), "0.1.0");
        assert_eq!(r("v{{ .Version }} ready={{.Ready}}"), "v0.1.0 ready=true");
        assert_eq!(r("{{.IPAM.RangeNumIPs}}"), "1048576");
        assert_eq!(r("{{.Nope.Deeper}}"), "<no value>");
        assert_eq!(r(r#"{{"a\tb\n"}}"#), "a\tb\n");
        // Two peers and one connection, printed the way Go prints maps.
        assert_eq!(r("{{.Router.Peers}}").matches("map[").count(), 3);
    }

    #[test]
    fn range_if_with_and_trimming() {
        assert_eq!(
            r(r#"{{range .DNS.Entries}}{{.Hostname}} {{.Address}}{{"\n"}}{{end}}"#),
            "a.weave.local. 10.32.0.1\nb.weave.local. 10.32.0.2\n"
        );
        assert_eq!(
            r(
                "{{range .Router.Peers}}{{.NickName}}:{{range .Connections}}{{.Address}}{{else}}none{{end}} {{end}}"
            ),
            "host1:10.0.0.2:6783 host2:none "
        );
        assert_eq!(r("{{if .IPAM}}ipam{{else}}no ipam{{end}}"), "ipam");
        assert_eq!(r("{{if .Proxy}}proxy{{else}}no proxy{{end}}"), "no proxy");
        assert_eq!(r("{{with .IPAM}}{{.ActiveIPs}}{{end}}"), "3");
        assert_eq!(r("a  {{- .Version -}}  b"), "a0.1.0b");
    }

    #[test]
    fn functions() {
        assert_eq!(r("{{len .DNS.Entries}}"), "2");
        assert_eq!(
            r("{{json .IPAM}}"),
            r#"{"ActiveIPs":3,"RangeNumIPs":1048576}"#
        );
        assert_eq!(
            r(
                r#"{{printf "%s has %d of %v (%q) 100%%" .Version .IPAM.ActiveIPs .IPAM.RangeNumIPs .Router.Name}}"#
            ),
            r#"0.1.0 has 3 of 1048576 ("aa:bb") 100%"#
        );
    }

    #[test]
    fn bad_templates_say_what() {
        for (t, want) in [
            ("{{.Version", "unclosed"),
            ("{{range .X}}", "without {{end}}"),
            ("{{end}}", "unexpected"),
            ("{{index .X 1}}", "\"index\" not defined"),
            ("{{\"open}}", "unterminated"),
            ("{{printf \"%x\" 1}}", "%x"),
            ("{{range .Version}}{{end}}", "range over"),
            ("{{}}", "empty"),
        ] {
            let e = render(t, &data()).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
        let deep = "{{if .Ready}}".repeat(100_000);
        assert!(
            render(&deep, &data())
                .unwrap_err()
                .to_string()
                .contains("nested")
        );
        // Odd inputs give an answer or an error, never a panic.
        for t in [
            "{{ -}}",
            "{{- }}",
            "{{-}}",
            "}}{{",
            "{{{{.}}}}",
            "é{{.Version}}ü",
        ] {
            let _ = render(t, &data());
        }
        assert_eq!(render("é{{.Version}}ü", &data()).unwrap(), "é0.1.0ü");
    }
}

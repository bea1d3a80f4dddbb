//! One BFCL entry — its id, its question's first turn, its functions and possible answers —
//! read from its JSON line with objects in their written order, and the conversation BFCL
//! sends an open model in prompting mode.

use crate::value::Py;
use crate::{get, system_prompt};

/// A chat message as BFCL's data writes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Msg {
    pub role: String,
    pub content: String,
}

impl Msg {
    pub fn new(role: &str, content: &str) -> Self {
        Msg {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// One BFCL entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// The first turn's messages (single-turn categories have one turn).
    pub messages: Vec<Msg>,
    pub functions: Vec<Py>,
    pub ground_truth: Vec<Py>,
}

impl Entry {
    /// An entry from its JSON line (read in order: the prompt shows the functions as written).
    pub fn parse(line: &str) -> Result<Entry, String> {
        let v: Py = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        Self::from_py(&v)
    }

    pub fn from_py(v: &Py) -> Result<Entry, String> {
        let id = match get(v, "id") {
            Some(Py::Str(s)) => s.clone(),
            _ => String::new(),
        };
        let Some(Py::List(turns)) = get(v, "question") else {
            return Err("`question` is not a list of turns".into());
        };
        let first = match turns.first() {
            Some(Py::List(m)) => m,
            // One flat list of messages, as some copies of the data have it.
            _ => turns,
        };
        let messages = first
            .iter()
            .map(|m| match (get(m, "role"), get(m, "content")) {
                (Some(Py::Str(r)), Some(Py::Str(c))) => Ok(Msg::new(r, c)),
                _ => Err("a message without a string `role` and `content`".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(Py::List(functions)) = get(v, "function") else {
            return Err("`function` is not a list of function documents".into());
        };
        let ground_truth = match get(v, "ground_truth") {
            Some(Py::List(g)) => g.clone(),
            None | Some(Py::None) => vec![],
            Some(_) => return Err("`ground_truth` is not a list of calls".into()),
        };
        Ok(Entry {
            id,
            messages,
            functions: functions.clone(),
            ground_truth,
        })
    }

    /// The conversation BFCL sends an open model: its default system prompt first (merged
    /// with the entry's own system message, which comes after it).
    pub fn conversation(&self) -> Vec<Msg> {
        let prompt = system_prompt(&self.functions);
        let mut messages = self.messages.clone();
        match messages.first_mut() {
            Some(m) if m.role == "system" => m.content = format!("{prompt}\n\n{}", m.content),
            _ => messages.insert(0, Msg::new("system", &prompt)),
        }
        messages
    }
}

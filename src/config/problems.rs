//! Every problem at once: the error type, and the helpers that walk the
//! configuration tree (unknown keys, bad values replaced by defaults).

use std::fmt;

use crate::config::ENV_PREFIX;

/// One thing wrong with a configuration, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `kafka.sasl.username` (empty for the whole file).
    pub path: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything wrong with a configuration, all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in key order as found.
    pub problems: Vec<Problem>,
}

impl crate::error::Classify for ConfigError {
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::BadInput
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub(super) fn single(path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                path: path.to_string(),
                message: message.into(),
            }],
        }
    }
}

/// Collects problems while checking.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// The environment variable overriding a dotted key path.
pub fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}__{}",
        path.replace('.', "__").to_ascii_uppercase()
    )
}

pub(super) fn is_secret_path(path: &str) -> bool {
    path.contains("password") || path.contains("secret")
}

pub(super) fn range(p: &mut Problems, path: &str, value: usize, min: usize, max: usize) {
    if value < min || value > max {
        p.add(path, format!("is {value}, must be between {min} and {max}"));
    }
}

/// A topic name Kafka does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    /// No name.
    #[error("topic name must not be empty")]
    Empty,
    /// `.` or `..`.
    #[error("{0:?} is not a legal topic name")]
    Dots(String),
    /// More than 249 characters.
    #[error("topic name is longer than 249 characters")]
    TooLong,
    /// A character outside ASCII letters, digits, `.`, `_` and `-`.
    #[error("topic name {name:?} contains {character:?}; only ASCII letters, digits, '.', '_' and '-' are legal")]
    Character {
        /// The name.
        name: String,
        /// The first illegal character.
        character: char,
    },
}

/// Kafka's topic name rules.
pub fn check_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(TopicNameError::Dots(name.to_string()));
    }
    if name.len() > 249 {
        return Err(TopicNameError::TooLong);
    }
    if let Some(character) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(TopicNameError::Character {
            name: name.to_string(),
            character,
        });
    }
    Ok(())
}

/// Removes keys that the defaults do not know, reporting each with a
/// suggestion; maps whose default is empty (free-form, e.g.
/// `kafka.properties`) are left alone. Scalars given where a string is
/// expected (environment values are parsed eagerly) are turned back into strings.
pub(super) fn prune_unknown(
    tree: &mut serde_json::Value,
    defaults: &serde_json::Value,
    path: &str,
    p: &mut Problems,
) {
    use serde_json::Value;
    let (Value::Object(map), Value::Object(known)) = (&mut *tree, defaults) else {
        if let (Value::Number(_) | Value::Bool(_), Value::String(_)) = (&*tree, defaults) {
            *tree = Value::String(tree.to_string());
        }
        return;
    };
    if known.is_empty() {
        return;
    }
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !known.contains_key(k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        map.remove(&key);
        let full = join(path, &key);
        let hint = known
            .keys()
            .map(|k| (edit_distance(k, &key), k))
            .filter(|(d, _)| *d <= 3)
            .min()
            .map(|(_, k)| format!("; did you mean `{}`?", join(path, k)))
            .unwrap_or_default();
        p.add(full, format!("unknown key{hint}"));
    }
    for (key, value) in map.iter_mut() {
        if let Some(d) = known.get(key) {
            prune_unknown(value, d, &join(path, key), p);
        }
    }
}

/// Puts the default value at `path` (dotted, as serde_path_to_error prints
/// it); returns false when the path cannot be resolved.
pub(super) fn replace_with_default(
    tree: &mut serde_json::Value,
    defaults: &serde_json::Value,
    path: &str,
) -> bool {
    if path.is_empty() {
        return false;
    }
    let mut segments: Vec<String> = Vec::new();
    for part in path.split('.') {
        // Sequence indexes print as `topics[2]`.
        match part.split_once('[') {
            Some((name, rest)) => {
                segments.push(name.to_string());
                segments.push(format!("[{rest}"));
            }
            None => segments.push(part.to_string()),
        }
    }
    let mut node = tree;
    let mut default = Some(defaults);
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if let Some(idx) = seg.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let Ok(idx) = idx.parse::<usize>() else {
                return false;
            };
            let Some(arr) = node.as_array_mut() else {
                return false;
            };
            if idx >= arr.len() {
                return false;
            }
            if i == last {
                arr.remove(idx);
                return true;
            }
            default = None;
            node = &mut arr[idx];
        } else {
            let Some(obj) = node.as_object_mut() else {
                return false;
            };
            default = default.and_then(|d| d.get(seg.as_str()));
            if i == last {
                match default {
                    Some(d) => obj.insert(seg.clone(), d.clone()),
                    None => obj.remove(seg.as_str()),
                };
                return true;
            }
            let Some(next) = obj.get_mut(seg.as_str()) else {
                return false;
            };
            node = next;
        }
    }
    false
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

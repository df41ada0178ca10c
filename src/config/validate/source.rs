//! The tools validation works with: [`Source`], one configuration file being checked, and
//! [`Section`], one table of it as the code that owns the table sees it.
//!
//! A kind (a store, a notifier, a format) validates its own settings in its own file, through
//! a [`Section`]: it deserializes the table into its strict raw type with [`Section::parse`],
//! checks each value, and records every problem with [`Section::problem`], which places it on
//! the file, line and key. The kind never sees the rest of the file, and nothing it does can
//! stop another section from being checked.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::super::expand::{expand, expand_portable};
use super::super::load::SourceFile;
use super::super::units::parse_duration;
use super::super::{Accounts, Environment, Machine, Problem};

/// A numeric id that stands in for a user or group that exists only on the node, in portable
/// mode.
const STAND_IN_ID: u32 = u32::MAX - 1;

/// One configuration file being checked: its path, its text, and how to point into it.
#[derive(Debug)]
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    /// Whether checks that depend on the machine are made, or left to the node.
    pub machine: Machine,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a SourceFile, machine: Machine) -> Self {
        Self { path: &file.path, text: &file.text, machine }
    }

    /// A check that depends on the node, left out in portable mode.
    pub fn skipped(&self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) -> Problem {
        Problem { skipped: true, ..self.problem(span, key, message) }
    }

    pub fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    pub fn problem(&self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) -> Problem {
        Problem {
            file: self.path.to_path_buf(),
            line: span.map(|s| self.line(s.start)),
            key: key.to_string(),
            message: message.into(),
            skipped: false,
        }
    }

    /// The file's top-level table, or `None` after recording every syntax error in it.
    pub fn parse(&self, problems: &mut Vec<Problem>) -> Option<Spanned<DeTable<'a>>> {
        let (table, errors) = DeTable::parse_recoverable(self.text);
        if errors.is_empty() {
            return Some(table);
        }
        for error in errors {
            problems.push(self.problem(error.span(), "", format!("TOML syntax: {}", error.message())));
        }
        None
    }

    /// Complains about top-level keys other than `accepted`.
    pub fn known_sections(&self, table: &DeTable<'_>, accepted: &[&str], problems: &mut Vec<Problem>) {
        for key in table.keys() {
            if !accepted.contains(&key.get_ref().as_ref()) {
                let list = accepted.iter().map(|a| format!("[{a}]")).collect::<Vec<_>>().join(", ");
                problems.push(self.problem(
                    Some(key.span()),
                    key.get_ref(),
                    format!("unknown section; expected {list}"),
                ));
            }
        }
    }

    /// A directory or file setting: expanded, and resolved against this file's directory when
    /// relative, so that a configuration and its policies can travel together.
    pub fn path_setting(
        &self,
        value: Option<&Spanned<String>>,
        default: &str,
        key: &str,
        env: &dyn Environment,
        problems: &mut Vec<Problem>,
    ) -> Option<PathBuf> {
        let text = match value {
            Some(value) => self.expand(value, key, env, problems)?,
            None => default.to_string(),
        };
        if text.trim().is_empty() {
            problems.push(self.problem(value.map(Spanned::span), key, "must not be empty"));
            return None;
        }
        let path = PathBuf::from(text);
        if path.is_absolute() {
            return Some(path);
        }
        Some(self.path.parent().unwrap_or(Path::new(".")).join(path))
    }

    /// Expands `${...}` in a setting, recording a problem if it cannot.
    pub fn expand(
        &self,
        value: &Spanned<String>,
        key: &str,
        env: &dyn Environment,
        problems: &mut Vec<Problem>,
    ) -> Option<String> {
        let expanded = match self.machine {
            Machine::Node => expand(value.get_ref(), env).map(|text| (text, Vec::new())),
            Machine::Portable => expand_portable(value.get_ref(), env),
        };
        match expanded {
            Ok((text, unset)) => {
                for name in unset {
                    problems.push(self.skipped(
                        Some(value.span()),
                        key,
                        format!("environment variable {name} is not set here; the node must set it"),
                    ));
                }
                Some(text)
            }
            Err(message) => {
                problems.push(self.problem(Some(value.span()), key, message));
                None
            }
        }
    }
}

/// One table of a configuration file under validation (`[stores.edge]`, `[notify] signal`, a
/// `[[deliver]]`), handed to the code that owns its settings.
pub struct Section<'a, 'p> {
    source: &'a Source<'a>,
    /// Where the table is, for messages: `stores.edge`, `notify.signal`, `deliver[2]`.
    key: String,
    value: Spanned<DeValue<'a>>,
    env: &'a dyn Environment,
    accounts: &'a dyn Accounts,
    problems: &'p mut Vec<Problem>,
}

impl std::fmt::Debug for Section<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Section").field("file", &self.source.path).field("key", &self.key).finish_non_exhaustive()
    }
}

impl<'a, 'p> Section<'a, 'p> {
    pub(crate) fn new(
        source: &'a Source<'a>,
        key: impl Into<String>,
        value: Spanned<DeValue<'a>>,
        env: &'a dyn Environment,
        accounts: &'a dyn Accounts,
        problems: &'p mut Vec<Problem>,
    ) -> Self {
        Section { source, key: key.into(), value, env, accounts, problems }
    }

    /// The table's key path, such as `stores.edge`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The whole table's place in the file.
    pub fn span(&self) -> Range<usize> {
        self.value.span()
    }

    /// The file this table is in.
    pub fn file(&self) -> &Path {
        self.source.path
    }

    /// The 1-based line of a byte offset in the file.
    pub fn line(&self, offset: usize) -> usize {
        self.source.line(offset)
    }

    /// The file's text at `span`, as written (quotes included).
    pub fn text(&self, span: Range<usize>) -> &str {
        self.source.text.get(span).unwrap_or("")
    }

    /// How many problems have been recorded so far, in this load (checks left to the node in
    /// portable mode do not count): compare before and after a check to tell whether it found
    /// anything.
    pub fn problem_count(&self) -> usize {
        count_problems(self.problems)
    }

    pub fn accounts(&self) -> &dyn Accounts {
        self.accounts
    }

    pub fn env(&self) -> &dyn Environment {
        self.env
    }

    fn field_key(&self, field: &str) -> String {
        if field.is_empty() { self.key.clone() } else { format!("{}.{field}", self.key) }
    }

    /// Records a problem with `field` of this table (or the table itself when `field` is
    /// empty), on the line of `span` (no line when `None`; [`Section::span`] is the table's).
    pub fn problem(&mut self, span: Option<Range<usize>>, field: &str, message: impl Into<String>) {
        let problem = self.source.problem(span, &self.field_key(field), message);
        self.problems.push(problem);
    }

    /// Records a problem placed exactly as given: a line inside a template, say.
    pub fn problem_at_line(&mut self, line: usize, field: &str, message: impl Into<String>) {
        let key = self.field_key(field);
        self.problems.push(Problem {
            file: self.source.path.to_path_buf(),
            line: Some(line),
            key,
            message: message.into(),
            skipped: false,
        });
    }

    /// Deserializes the table into `T` (a strict, `deny_unknown_fields` type), recording every
    /// field that does not fit.
    ///
    /// Serde stops at the first bad field, so each bad field is reported, taken out and the
    /// table tried again: an unknown key and a mistyped value in one table both show up. What
    /// remains is returned so its values are checked too; the recorded problems already make
    /// the whole load fail. A required field that had to be taken out leaves nothing to
    /// return, and its "missing field" echo is not reported.
    pub fn parse<T: DeserializeOwned>(&mut self) -> Option<T> {
        let mut value = self.value.clone();
        let mut removed = false;
        loop {
            let error = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(section) => return Some(section),
                Err(error) => error,
            };
            if removed && error.message().starts_with("missing field") {
                return None;
            }
            let problem = self.source.problem(error.span().or(Some(value.span())), &self.key, error.message());
            self.problems.push(problem);
            let (Some(span), DeValue::Table(table)) = (error.span(), value.get_mut()) else { return None };
            let mut kept = DeTable::new();
            for (k, v) in table.iter() {
                if !(k.span().contains(&span.start) || v.span().contains(&span.start)) {
                    kept.insert(k.clone(), v.clone());
                }
            }
            if kept.len() == table.len() {
                return None;
            }
            *table = kept;
            removed = true;
        }
    }

    /// Whether the value is a table at all (rather than, say, a string where a table belongs).
    pub fn is_table(&self) -> bool {
        self.value.get_ref().as_table().is_some()
    }

    /// The keys of the table, in file order, with their places: for tables whose keys name
    /// kinds (`[notify] signal = ...`).
    pub fn keys(&self) -> Vec<(String, Range<usize>)> {
        match self.value.get_ref().as_table() {
            Some(table) => table.iter().map(|(k, _)| (k.get_ref().to_string(), k.span())).collect(),
            None => Vec::new(),
        }
    }

    /// A sub-table of this one as a section of its own, keyed `KEY.name`.
    pub fn child(&mut self, name: &str) -> Option<Section<'a, '_>> {
        let value = self.value.get_ref().as_table()?.get(name)?.clone();
        Some(Section {
            source: self.source,
            key: self.field_key(name),
            value,
            env: self.env,
            accounts: self.accounts,
            problems: self.problems,
        })
    }

    /// The table split in two: the entries named in `keys`, and the others. How a `[[deliver]]`
    /// tells its common settings from its format's own.
    pub fn split(&self, keys: &[&str]) -> (Spanned<DeValue<'a>>, Spanned<DeValue<'a>>) {
        let span = self.value.span();
        let (mut taken, mut rest) = (DeTable::new(), DeTable::new());
        if let Some(table) = self.value.get_ref().as_table() {
            for (k, v) in table.iter() {
                let side = if keys.contains(&k.get_ref().as_ref()) { &mut taken } else { &mut rest };
                side.insert(k.clone(), v.clone());
            }
        }
        (Spanned::new(span.clone(), DeValue::Table(taken)), Spanned::new(span, DeValue::Table(rest)))
    }

    /// A section with this one's key and place, holding `value` (a part from [`Section::split`]).
    pub fn with_value(&mut self, value: Spanned<DeValue<'a>>) -> Section<'a, '_> {
        Section {
            source: self.source,
            key: self.key.clone(),
            value,
            env: self.env,
            accounts: self.accounts,
            problems: self.problems,
        }
    }

    /// Expands `${...}` in a setting.
    pub fn expand(&mut self, value: &Spanned<String>, field: &str) -> Option<String> {
        let key = self.field_key(field);
        self.source.expand(value, &key, self.env, self.problems)
    }

    /// Expands a setting and checks it with `check`, recording what it says is wrong.
    pub fn checked<T>(
        &mut self,
        value: &Spanned<String>,
        field: &str,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.expand(value, field)?;
        check(&text).map_err(|m| self.problem(Some(value.span()), field, m)).ok()
    }

    /// A file or directory setting: expanded, and relative to the configuration file's
    /// directory unless absolute.
    pub fn path(&mut self, value: &Spanned<String>, field: &str) -> Option<PathBuf> {
        let key = self.field_key(field);
        self.source.path_setting(Some(value), "", &key, self.env, self.problems)
    }

    /// An absolute path setting (no `${...}`, no relative path): for files another program owns.
    pub fn absolute_path(&mut self, value: &Spanned<String>, field: &str) -> Option<PathBuf> {
        let path = PathBuf::from(value.get_ref());
        if path.is_absolute() {
            Some(path)
        } else {
            self.problem(Some(value.span()), field, format!("\"{}\" must be an absolute path", value.get_ref()));
            None
        }
    }

    /// A duration setting, `default` when absent. Zero is refused.
    pub fn duration(&mut self, value: Option<&Spanned<String>>, default: Duration, field: &str) -> Option<Duration> {
        match value {
            None => Some(default),
            Some(value) => parse_duration(value.get_ref()).map_err(|m| self.problem(Some(value.span()), field, m)).ok(),
        }
    }

    /// An integer setting in `range`, `default` when absent.
    pub fn integer<T: TryFrom<i64> + Copy + PartialOrd + std::fmt::Display>(
        &mut self,
        value: Option<&Spanned<i64>>,
        default: T,
        range: std::ops::RangeInclusive<T>,
        field: &str,
        what: &str,
    ) -> Option<T> {
        let Some(value) = value else { return Some(default) };
        match T::try_from(*value.get_ref()) {
            Ok(n) if range.contains(&n) => Some(n),
            _ => {
                let message =
                    format!("{} is out of range: {} to {} {what}", value.get_ref(), range.start(), range.end());
                self.problem(Some(value.span()), field, message.trim_end().to_string());
                None
            }
        }
    }
}

/// The problems among `problems`, leaving out checks skipped in portable mode.
pub(crate) fn count_problems(problems: &[Problem]) -> usize {
    problems.iter().filter(|p| !p.skipped).count()
}

/// Which user database an account setting names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    User,
    Group,
}

impl Section<'_, '_> {
    /// A user or group setting as a numeric id: `Some(None)` when absent, `None` when invalid.
    pub fn account(
        &mut self,
        value: Option<&Spanned<super::super::raw::NameOrId>>,
        field: &str,
        account: Account,
    ) -> Option<Option<u32>> {
        use super::super::raw::NameOrId;
        let Some(value) = value else { return Some(None) };
        let what = match account {
            Account::User => "user",
            Account::Group => "group",
        };
        let id = match value.get_ref() {
            NameOrId::Name(name) => {
                let found = match account {
                    Account::User => self.accounts.user_id(name),
                    Account::Group => self.accounts.group_id(name),
                };
                match (found, self.source.machine) {
                    (Some(id), _) => Ok(id),
                    (None, Machine::Portable) => {
                        let message = format!("{what} \"{name}\" is not on this machine; the node must have it");
                        let skipped = self.source.skipped(Some(value.span()), &self.field_key(field), message);
                        self.problems.push(skipped);
                        Ok(STAND_IN_ID)
                    }
                    (None, Machine::Node) => Err(format!(
                        "{what} \"{name}\" does not exist on this machine (`keyturn validate --portable` checks a configuration elsewhere)"
                    )),
                }
            }
            NameOrId::Id(id) => u32::try_from(*id)
                .ok()
                .filter(|id| *id != u32::MAX)
                .ok_or_else(|| format!("{id} is not a valid {what} id")),
        };
        id.map(Some).map_err(|m| self.problem(Some(value.span()), field, m)).ok()
    }
}

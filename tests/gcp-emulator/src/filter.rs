//! The list `filter` parameter: a small subset of Google's list-filter language (AIP-160).
//!
//! Supported: restrictions `field:value`, `field=value`, `field!=value` and presence
//! `field:*`; `AND`, `OR` (which binds tighter than `AND`, as in AIP-160), juxtaposition as
//! `AND`, `NOT`/`-` negation and parentheses. Fields are whatever the caller's resource offers
//! (`state` and `name` for versions; `name` and `labels.KEY` for secrets); anything else is
//! 400 INVALID_ARGUMENT rather than a silent match-all. Values compare case-insensitively;
//! `:` on a name means "contains". Timestamps comparisons (`create_time>…`) are not supported.

use crate::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Op(Operator),
    Word(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operator {
    Has,
    Equals,
    NotEquals,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Restriction { field: String, operator: Operator, value: String },
}

/// What a filtered resource exposes.
pub(crate) trait Filterable {
    /// Whether `field` may appear in a filter on this resource at all.
    fn supports(field: &str) -> bool;
    /// The value of a supported `field`, `None` if this item has none.
    fn field(&self, field: &str) -> Option<String>;
    /// Fields whose `:` means substring rather than equality.
    fn is_text(field: &str) -> bool;
}

fn invalid(detail: &str) -> ApiError {
    ApiError::invalid_argument(format!("Invalid filter: {detail}"))
}

fn tokenize(text: &str) -> Result<Vec<Token>, ApiError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            ':' => {
                chars.next();
                tokens.push(Token::Op(Operator::Has));
            }
            '=' => {
                chars.next();
                tokens.push(Token::Op(Operator::Equals));
            }
            '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err(invalid("'!' must be followed by '='"));
                }
                tokens.push(Token::Op(Operator::NotEquals));
            }
            '"' => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => word.extend(chars.next()),
                        Some(c) => word.push(c),
                        None => return Err(invalid("unterminated quoted string")),
                    }
                }
                tokens.push(Token::Word(word));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | ':' | '=' | '!' | '"') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w == keyword)
    }

    /// expression := factor { ["AND"] factor }
    fn expression(&mut self) -> Result<Filter, ApiError> {
        let mut terms = vec![self.factor()?];
        loop {
            match self.peek() {
                None | Some(Token::Close) => break,
                _ if self.is_keyword("AND") => {
                    self.next();
                    terms.push(self.factor()?);
                }
                _ => terms.push(self.factor()?),
            }
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Filter::And(terms) })
    }

    /// factor := term { "OR" term }
    fn factor(&mut self) -> Result<Filter, ApiError> {
        let mut terms = vec![self.term()?];
        while self.is_keyword("OR") {
            self.next();
            terms.push(self.term()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Filter::Or(terms) })
    }

    /// term := ["NOT" | "-"] ( "(" expression ")" | field operator value )
    fn term(&mut self) -> Result<Filter, ApiError> {
        if self.is_keyword("NOT") {
            self.next();
            return Ok(Filter::Not(Box::new(self.term()?)));
        }
        match self.next() {
            Some(Token::Open) => {
                let inner = self.expression()?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err(invalid("missing ')'")),
                }
            }
            Some(Token::Word(word)) => {
                let (negated, field) = match word.strip_prefix('-') {
                    Some(rest) if !rest.is_empty() => (true, rest.to_owned()),
                    _ => (false, word),
                };
                let Some(Token::Op(operator)) = self.next() else {
                    return Err(invalid(&format!("expected ':', '=' or '!=' after [{field}]")));
                };
                let Some(Token::Word(value)) = self.next() else {
                    return Err(invalid(&format!("expected a value after [{field}]")));
                };
                let restriction = Filter::Restriction { field, operator, value };
                Ok(if negated { Filter::Not(Box::new(restriction)) } else { restriction })
            }
            _ => Err(invalid("expected a restriction such as state:ENABLED")),
        }
    }
}

impl Filter {
    pub(crate) fn parse(text: &str) -> Result<Filter, ApiError> {
        let mut parser = Parser { tokens: tokenize(text)?, position: 0 };
        if parser.tokens.is_empty() {
            return Err(invalid("the filter is empty"));
        }
        let filter = parser.expression()?;
        if parser.position < parser.tokens.len() {
            return Err(invalid("unbalanced ')'"));
        }
        Ok(filter)
    }

    /// Checks that every field is one `T` knows, so an unsupported filter fails even on an
    /// empty list.
    pub(crate) fn check_fields<T: Filterable>(&self) -> Result<(), ApiError> {
        match self {
            Filter::And(terms) | Filter::Or(terms) => terms.iter().try_for_each(Filter::check_fields::<T>),
            Filter::Not(inner) => inner.check_fields::<T>(),
            Filter::Restriction { field, .. } if T::supports(field) => Ok(()),
            Filter::Restriction { field, .. } => Err(invalid(&format!("the field [{field}] is not supported"))),
        }
    }

    pub(crate) fn matches<T: Filterable>(&self, item: &T) -> bool {
        match self {
            Filter::And(terms) => terms.iter().all(|t| t.matches(item)),
            Filter::Or(terms) => terms.iter().any(|t| t.matches(item)),
            Filter::Not(inner) => !inner.matches(item),
            Filter::Restriction { field, operator, value } => {
                let actual = item.field(field);
                let wanted = value.to_lowercase();
                match (operator, actual) {
                    (Operator::Has, Some(_)) if value == "*" => true,
                    (Operator::Has, Some(actual)) if T::is_text(field) => actual.to_lowercase().contains(&wanted),
                    (Operator::Has | Operator::Equals, Some(actual)) => actual.to_lowercase() == wanted,
                    (Operator::NotEquals, Some(actual)) => actual.to_lowercase() != wanted,
                    (Operator::NotEquals, None) => true,
                    (_, None) => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Version(&'static str, &'static str);

    impl Filterable for Version {
        fn supports(field: &str) -> bool {
            matches!(field, "state" | "name")
        }
        fn field(&self, field: &str) -> Option<String> {
            match field {
                "state" => Some(self.0.to_owned()),
                _ => Some(self.1.to_owned()),
            }
        }
        fn is_text(field: &str) -> bool {
            field == "name"
        }
    }

    fn check(filter: &str, item: &Version) -> bool {
        Filter::parse(filter).unwrap().matches(item)
    }

    #[test]
    fn state_restrictions() {
        let enabled = Version("ENABLED", "projects/1/secrets/s/versions/1");
        let disabled = Version("DISABLED", "projects/1/secrets/s/versions/2");
        assert!(check("state:ENABLED", &enabled));
        assert!(!check("state:ENABLED", &disabled));
        assert!(check("state=enabled", &enabled), "values ignore case");
        assert!(check("NOT state:DESTROYED", &disabled));
        assert!(check("-state:ENABLED", &disabled));
        assert!(check("state:ENABLED OR state:DISABLED", &disabled));
        assert!(!check("state:ENABLED AND name:versions/2", &disabled));
        assert!(check("state != ENABLED", &disabled));
        assert!(check("(state:ENABLED OR state:DISABLED) name:\"versions/1\"", &enabled));
    }

    #[test]
    fn or_binds_tighter_than_and() {
        let disabled = Version("DISABLED", "x");
        // AIP-160: a AND b OR c == a AND (b OR c)
        assert!(!check("name:y AND state:DISABLED OR state:ENABLED", &disabled));
    }

    #[test]
    fn errors() {
        for bad in ["", "state", "state:", "(state:ENABLED", "state:ENABLED)", "a ! b"] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        let filter = Filter::parse("colour:red").unwrap();
        assert!(filter.check_fields::<Version>().is_err());
    }
}

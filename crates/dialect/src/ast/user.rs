//! User statements: `CREATE USER`, `ALTER USER`, `DROP USER`, and the roles they grant.

use std::fmt;

use datafusion_common::Result;
use datafusion_sql::sqlparser::ast::Ident;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::Token;

use super::Quoted;
use crate::parser::{expect_word, parse_string};

/// A user's role. Ordered by privilege: each role may do what the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// DML and SELECT on user tables.
    User,
    /// Also CONSUME, ACK and consumer-group statements.
    Service,
    /// Also DDL, users, `system.users`, file-system statements and engine options.
    Dba,
    /// Everything, including managing `system` users.
    System,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::User, Role::Service, Role::Dba, Role::System];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Service => "service",
            Role::Dba => "dba",
            Role::System => "system",
        }
    }

    /// Parses a role name, ignoring case.
    pub fn from_name(name: &str) -> Option<Self> {
        Role::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every user statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum UserStatement {
    Create(CreateUser),
    Alter(AlterUser),
    Drop(DropUser),
}

impl UserStatement {
    /// Parses one user statement (the caller has checked it starts with `CREATE|ALTER|DROP USER`).
    pub fn parse(p: &mut Parser<'_>) -> Result<Self> {
        let first = p.peek_token().token;
        if crate::parser::is_word(&first, "CREATE") {
            Ok(UserStatement::Create(CreateUser::parse(p)?))
        } else if crate::parser::is_word(&first, "ALTER") {
            Ok(UserStatement::Alter(AlterUser::parse(p)?))
        } else {
            Ok(UserStatement::Drop(DropUser::parse(p)?))
        }
    }

    /// The user the statement is about.
    pub fn name(&self) -> &str {
        match self {
            UserStatement::Create(s) => &s.name,
            UserStatement::Alter(s) => &s.name,
            UserStatement::Drop(s) => &s.name,
        }
    }
}

impl fmt::Display for UserStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserStatement::Create(s) => s.fmt(f),
            UserStatement::Alter(s) => s.fmt(f),
            UserStatement::Drop(s) => s.fmt(f),
        }
    }
}

/// ```text
/// CREATE USER [IF NOT EXISTS] <name> WITH PASSWORD '<password>' ROLE user|service|dba|system
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct CreateUser {
    pub if_not_exists: bool,
    pub name: String,
    pub password: String,
    pub role: Role,
}

impl CreateUser {
    fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "CREATE")?;
        expect_word(p, "USER")?;
        let if_not_exists = crate::parser::parse_if_exists(p, true)?;
        let name = parse_user_name(p)?;
        p.expect_keyword_is(Keyword::WITH)?;
        expect_word(p, "PASSWORD")?;
        let password = parse_string(p, "a password in single quotes")?;
        expect_word(p, "ROLE")?;
        let role = parse_role(p)?;
        Ok(Self { if_not_exists, name, password, role })
    }
}

impl fmt::Display for CreateUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CREATE USER {}{} WITH PASSWORD {} ROLE {}",
            if self.if_not_exists { "IF NOT EXISTS " } else { "" },
            UserName(&self.name),
            Quoted(&self.password),
            self.role.as_str().to_ascii_uppercase()
        )
    }
}

/// What `ALTER USER` changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum AlterUserAction {
    SetPassword(String),
    SetRole(Role),
}

/// ```text
/// ALTER USER <name> SET PASSWORD '<password>'
/// ALTER USER <name> SET ROLE user|service|dba|system
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct AlterUser {
    pub name: String,
    pub action: AlterUserAction,
}

impl AlterUser {
    fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "ALTER")?;
        expect_word(p, "USER")?;
        let name = parse_user_name(p)?;
        p.expect_keyword_is(Keyword::SET)?;
        let action = if crate::parser::parse_word(p, "PASSWORD") {
            AlterUserAction::SetPassword(parse_string(p, "a password in single quotes")?)
        } else if crate::parser::parse_word(p, "ROLE") {
            AlterUserAction::SetRole(parse_role(p)?)
        } else {
            return Err(p.expected::<()>("PASSWORD or ROLE", p.peek_token()).unwrap_err().into());
        };
        Ok(Self { name, action })
    }
}

impl fmt::Display for AlterUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ALTER USER {} SET ", UserName(&self.name))?;
        match &self.action {
            AlterUserAction::SetPassword(p) => write!(f, "PASSWORD {}", Quoted(p)),
            AlterUserAction::SetRole(r) => write!(f, "ROLE {}", r.as_str().to_ascii_uppercase()),
        }
    }
}

/// ```text
/// DROP USER [IF EXISTS] <name>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct DropUser {
    pub if_exists: bool,
    pub name: String,
}

impl DropUser {
    fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "DROP")?;
        expect_word(p, "USER")?;
        let if_exists = crate::parser::parse_if_exists(p, false)?;
        let name = parse_user_name(p)?;
        Ok(Self { if_exists, name })
    }
}

impl fmt::Display for DropUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DROP USER {}{}", if self.if_exists { "IF EXISTS " } else { "" }, UserName(&self.name))
    }
}

/// The longest user name, in bytes.
pub const MAX_USER_NAME_BYTES: usize = 63;

/// A user name: an identifier (unquoted ones are lowercased, as table names), 1 to 63 bytes.
fn parse_user_name(p: &mut Parser<'_>) -> Result<String, ParserError> {
    let at = p.peek_token();
    let ident: Ident = match &at.token {
        Token::Word(_) => p.parse_identifier()?,
        _ => return p.expected("a user name", at),
    };
    let name = if ident.quote_style.is_some() { ident.value } else { ident.value.to_lowercase() };
    if name.is_empty() || name.len() > MAX_USER_NAME_BYTES {
        return p.expected(&format!("a user name of 1 to {MAX_USER_NAME_BYTES} bytes"), at);
    }
    Ok(name)
}

fn parse_role(p: &mut Parser<'_>) -> Result<Role, ParserError> {
    let at = p.peek_token();
    let role = match &at.token {
        Token::Word(w) if w.quote_style.is_none() => Role::from_name(&w.value),
        Token::SingleQuotedString(s) => Role::from_name(s),
        _ => None,
    };
    match role {
        Some(r) => {
            p.next_token();
            Ok(r)
        }
        None => p.expected("a role: USER, SERVICE, DBA or SYSTEM", at),
    }
}

/// Prints a user name as an identifier: bare when it reads back the same, quoted otherwise.
struct UserName<'a>(&'a str);

impl fmt::Display for UserName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare = self.0.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && self.0.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && datafusion_sql::sqlparser::keywords::ALL_KEYWORDS
                .binary_search(&self.0.to_ascii_uppercase().as_str())
                .is_err();
        if bare { f.write_str(self.0) } else { write!(f, "\"{}\"", self.0.replace('"', "\"\"")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::test_util::parse_error;
    use crate::parser::{Statement, parse_sql};

    fn user_stmt(sql: &str) -> UserStatement {
        let mut s = parse_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let Statement::User(u) = s.remove(0).statement else { panic!("not a user statement: {sql}") };
        u
    }

    /// Parse, print, compare with `canonical`, reparse and compare the ASTs.
    fn parses_to(sql: &str, canonical: &str) -> UserStatement {
        let u = user_stmt(sql);
        assert_eq!(u.to_string(), canonical);
        assert_eq!(user_stmt(canonical), u);
        u
    }

    #[test]
    fn user_statements_round_trip() {
        let u = parses_to(
            "create user Alice with password 'it''s' role service",
            "CREATE USER alice WITH PASSWORD 'it''s' ROLE SERVICE",
        );
        let UserStatement::Create(c) = u else { panic!() };
        assert_eq!((c.name.as_str(), c.password.as_str(), c.role), ("alice", "it's", Role::Service));
        parses_to(
            "CREATE USER IF NOT EXISTS \"Bob Smith\" WITH PASSWORD '' ROLE DBA",
            "CREATE USER IF NOT EXISTS \"Bob Smith\" WITH PASSWORD '' ROLE DBA",
        );
        parses_to(
            "CREATE USER \"select\" WITH PASSWORD 'x' ROLE 'user'",
            "CREATE USER \"select\" WITH PASSWORD 'x' ROLE USER",
        );
        parses_to("ALTER USER alice SET PASSWORD 'new'", "ALTER USER alice SET PASSWORD 'new'");
        parses_to("ALTER USER alice SET ROLE system", "ALTER USER alice SET ROLE SYSTEM");
        parses_to("DROP USER IF EXISTS alice", "DROP USER IF EXISTS alice");
        parses_to("drop user alice", "DROP USER alice");
    }

    #[test]
    fn user_statement_errors() {
        assert!(
            parse_error("CREATE USER a WITH PASSWORD 'x' ROLE admin")
                .contains("Expected: a role: USER, SERVICE, DBA or SYSTEM, found: admin")
        );
        assert!(
            parse_error("CREATE USER a WITH PASSWORD x ROLE dba")
                .contains("Expected: a password in single quotes, found: x")
        );
        assert!(parse_error("CREATE USER a ROLE dba").contains("Expected: WITH, found: ROLE"));
        assert!(parse_error("CREATE USER \"\" WITH PASSWORD 'x' ROLE dba").contains("a user name of 1 to 63 bytes"));
        assert!(parse_error(&format!("DROP USER {}", "a".repeat(64))).contains("a user name of 1 to 63 bytes"));
        assert!(parse_error("ALTER USER a SET NAME 'b'").contains("Expected: PASSWORD or ROLE, found: NAME"));
        assert!(parse_error("DROP USER 'a'").contains("Expected: a user name, found: 'a'"));
        assert!(parse_error("DROP USER a b").contains("Expected: end of statement, found: b"));
    }
}

//! A tiny integer expression language for load settings that depend on the load point, such as the seed's
//! rule for requests per point: `requests = "max(2, 3 * concurrency)"`.
//!
//! Grammar: integers, the variable `concurrency`, `+ - * /` (integer division), parentheses, and the
//! functions `max(a, b, ...)` and `min(a, b, ...)`. Parsed once during validation; evaluation cannot fail
//! except for division by zero, which validation also rules out by evaluating at every concurrency.

use std::fmt;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(into = "String")]
pub struct Expr {
    text: String,
    node: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Int(i64),
    Concurrency,
    Binary(Box<Node>, char, Box<Node>),
    Call(Func, Vec<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Max,
    Min,
}

impl From<Expr> for String {
    fn from(e: Expr) -> String {
        e.text
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Expr {
    pub fn constant(n: i64) -> Self {
        Expr {
            text: n.to_string(),
            node: Node::Int(n),
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let tokens = tokenize(text)?;
        let mut p = Parser { tokens, pos: 0 };
        let node = p.expr()?;
        if p.pos != p.tokens.len() {
            return Err(format!("unexpected `{}`", p.tokens[p.pos]));
        }
        Ok(Expr {
            text: text.trim().to_string(),
            node,
        })
    }

    /// Evaluates at a concurrency; `Err` only for division by zero or overflow.
    pub fn eval(&self, concurrency: u32) -> Result<i64, String> {
        eval(&self.node, i64::from(concurrency))
    }
}

fn eval(node: &Node, c: i64) -> Result<i64, String> {
    Ok(match node {
        Node::Int(n) => *n,
        Node::Concurrency => c,
        Node::Binary(a, op, b) => {
            let (a, b) = (eval(a, c)?, eval(b, c)?);
            let r = match op {
                '+' => a.checked_add(b),
                '-' => a.checked_sub(b),
                '*' => a.checked_mul(b),
                _ if b == 0 => return Err("division by zero".into()),
                _ => a.checked_div(b),
            };
            r.ok_or("overflow")?
        }
        Node::Call(func, args) => {
            let values = args
                .iter()
                .map(|a| eval(a, c))
                .collect::<Result<Vec<_>, _>>()?;
            let it = values.into_iter();
            match func {
                Func::Max => it.max(),
                Func::Min => it.min(),
            }
            .ok_or("max()/min() need at least one argument")?
        }
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Int(i64),
    Ident(String),
    Sym(char),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Int(n) => write!(f, "{n}"),
            Token::Ident(s) => f.write_str(s),
            Token::Sym(c) => write!(f, "{c}"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&ch) = chars.peek() {
        if ch.is_whitespace() {
            chars.next();
        } else if ch.is_ascii_digit() {
            let mut s = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit() || **d == '_') {
                if d != '_' {
                    s.push(d);
                }
                chars.next();
            }
            out.push(Token::Int(
                s.parse()
                    .map_err(|_| format!("number `{s}` is too large"))?,
            ));
        } else if ch.is_ascii_alphabetic() || ch == '_' {
            let mut s = String::new();
            while let Some(&d) = chars
                .peek()
                .filter(|d| d.is_ascii_alphanumeric() || **d == '_')
            {
                s.push(d);
                chars.next();
            }
            out.push(Token::Ident(s));
        } else if "+-*/(),".contains(ch) {
            out.push(Token::Sym(ch));
            chars.next();
        } else {
            return Err(format!("unexpected character `{ch}`"));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_sym(&self, syms: &str) -> Option<char> {
        match self.tokens.get(self.pos) {
            Some(Token::Sym(c)) if syms.contains(*c) => Some(*c),
            _ => None,
        }
    }

    fn expect(&mut self, sym: char) -> Result<(), String> {
        if self.peek_sym(&sym.to_string()).is_some() {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected `{sym}`"))
        }
    }

    fn expr(&mut self) -> Result<Node, String> {
        let mut node = self.term()?;
        while let Some(op) = self.peek_sym("+-") {
            self.pos += 1;
            node = Node::Binary(Box::new(node), op, Box::new(self.term()?));
        }
        Ok(node)
    }

    fn term(&mut self) -> Result<Node, String> {
        let mut node = self.factor()?;
        while let Some(op) = self.peek_sym("*/") {
            self.pos += 1;
            node = Node::Binary(Box::new(node), op, Box::new(self.factor()?));
        }
        Ok(node)
    }

    fn factor(&mut self) -> Result<Node, String> {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or("unexpected end of expression")?;
        self.pos += 1;
        match token {
            Token::Int(n) => Ok(Node::Int(n)),
            Token::Sym('(') => {
                let node = self.expr()?;
                self.expect(')')?;
                Ok(node)
            }
            Token::Ident(name) if name == "concurrency" => Ok(Node::Concurrency),
            Token::Ident(name) if name == "max" || name == "min" => {
                let func = if name == "max" { Func::Max } else { Func::Min };
                self.expect('(')?;
                let mut args = vec![self.expr()?];
                while self.peek_sym(",").is_some() {
                    self.pos += 1;
                    args.push(self.expr()?);
                }
                self.expect(')')?;
                Ok(Node::Call(func, args))
            }
            Token::Ident(name) => Err(format!(
                "unknown name `{name}` (expressions know `concurrency`, `max(..)` and `min(..)`)"
            )),
            other => Err(format!("unexpected `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_rule() {
        let e = Expr::parse("max(2, 3 * concurrency)").unwrap();
        assert_eq!(e.eval(1).unwrap(), 3);
        assert_eq!(e.eval(10).unwrap(), 30);
        assert_eq!(e.eval(40).unwrap(), 120);
    }

    #[test]
    fn precedence_and_parentheses() {
        assert_eq!(Expr::parse("2 + 3 * 4").unwrap().eval(0).unwrap(), 14);
        assert_eq!(Expr::parse("(2 + 3) * 4").unwrap().eval(0).unwrap(), 20);
        assert_eq!(
            Expr::parse("concurrency / 2 - 1")
                .unwrap()
                .eval(10)
                .unwrap(),
            4
        );
        assert_eq!(
            Expr::parse("min(100, concurrency * 5, 7)")
                .unwrap()
                .eval(10)
                .unwrap(),
            7
        );
    }

    #[test]
    fn errors_are_explained() {
        assert!(
            Expr::parse("3 * concurency")
                .unwrap_err()
                .contains("unknown name `concurency`")
        );
        assert!(
            Expr::parse("3 *")
                .unwrap_err()
                .contains("end of expression")
        );
        assert!(
            Expr::parse("max(2, 3")
                .unwrap_err()
                .contains("expected `)`")
        );
        assert!(
            Expr::parse("2 $ 3")
                .unwrap_err()
                .contains("unexpected character")
        );
        assert_eq!(
            Expr::parse("10 / (concurrency - 1)")
                .unwrap()
                .eval(1)
                .unwrap_err(),
            "division by zero"
        );
    }
}

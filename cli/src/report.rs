//! What an import could not carry over, item by item: where (the element or attribute in the
//! APIM policy, or the field of the TokenPolicy), why, and what to do.

use std::fmt;

/// How an item bears on the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Something APIM does that the TokenPolicy does not: left out, or written as a default.
    NotCarriedOver,
    /// A named value (`{{name}}`) that was not given with `--set`: left as a placeholder.
    Placeholder,
    /// A policy expression: written as a placeholder that no request matches, or a default.
    Expression,
    /// A token policy APIM applies conditionally, or outside `<inbound>`: converted, but whether
    /// it belongs in the cluster is the user's call.
    Decision,
    /// The written TokenPolicy would be refused at apply time (the validating webhook's checks).
    Refused,
    /// Worth knowing, nothing lost: the import is still complete.
    Note,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::NotCarriedOver => "not carried over",
            Self::Placeholder => "placeholder",
            Self::Expression => "policy expression",
            Self::Decision => "needs a decision",
            Self::Refused => "refused at apply time",
            Self::Note => "note",
        }
    }

    /// Whether an item of this kind means the import is incomplete.
    pub fn is_loss(self) -> bool {
        self != Self::Note
    }
}

/// One item of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    /// `validate-jwt/issuer-signing-keys/key[2]/@certificate-id`, or a TokenPolicy field
    /// (`orders-api: spec.validateJwt.audiences[0]`) for [`Kind::Refused`].
    pub path: String,
    /// Why, and what to do.
    pub message: String,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.kind.label(), self.path, self.message)
    }
}

/// Every item of one import, in document order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub items: Vec<Item>,
}

impl Report {
    pub fn push(&mut self, kind: Kind, path: impl Into<String>, message: impl Into<String>) {
        self.items.push(Item {
            kind,
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether everything was carried over (notes aside).
    pub fn is_complete(&self) -> bool {
        !self.items.iter().any(|item| item.kind.is_loss())
    }

    /// The report as printed on stderr: one line per item, then a summary line.
    pub fn render(&self, policies: usize) -> String {
        let mut out = String::new();
        for item in &self.items {
            out.push_str(&item.to_string());
            out.push('\n');
        }
        let losses = self.items.iter().filter(|i| i.kind.is_loss()).count();
        let plural = |n: usize, one: &str, many: &str| {
            if n == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {many}")
            }
        };
        let written = plural(policies, "TokenPolicy", "TokenPolicies");
        if losses == 0 {
            out.push_str(&format!("imported {written}; everything carried over\n"));
        } else {
            out.push_str(&format!(
                "imported {written}; {} to resolve before applying (exit {})\n",
                plural(losses, "item", "items"),
                crate::exit::INCOMPLETE
            ));
        }
        out
    }
}

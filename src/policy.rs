//! The policy's vocabulary: the ten category codes, the four severities and the response each
//! severity maps to (`../shared/policy/categories.md`).
//!
//! Everything downstream (lexicon files, alerts, the gRPC enums, the evaluation corpora) speaks
//! these codes, so parsing and printing them lives in one place.

use std::fmt;
use std::str::FromStr;

/// One kind of conduct the policy names; the code is stable and used in the API and lexicons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Threats, abuse, insults, personality denial (身体的または精神的な攻撃).
    Attack,
    /// Menacing tone without a concrete threat (威圧的な言動).
    Intimidation,
    /// Keeping the agent on the line or in place (拘束的な行動).
    Restraint,
    /// Demanding a kneeling apology (土下座の要求).
    Dogeza,
    /// The same demand or abuse over and over (継続的な言動・執拗な言動).
    Persistence,
    /// Discriminatory or sexual remarks (差別的な言動・性的な言動).
    DiscriminationSexual,
    /// Attacks on, or demands about, the agent as a person (従業者個人への攻撃・要求).
    PersonalAttack,
    /// Threats to post the agent online (SNS/インターネットなどへの従業者個人情報の投稿).
    OnlineExposure,
    /// Unreasonable money, service or apology demands (不合理または過剰な要求).
    ExcessiveDemand,
    /// Anything else that seriously harms the working environment (その他).
    Other,
}

impl Category {
    /// Every category, in the policy's order.
    pub const ALL: [Category; 10] = [
        Category::Attack,
        Category::Intimidation,
        Category::Restraint,
        Category::Dogeza,
        Category::Persistence,
        Category::DiscriminationSexual,
        Category::PersonalAttack,
        Category::OnlineExposure,
        Category::ExcessiveDemand,
        Category::Other,
    ];

    /// The policy code, as written in lexicons, corpora and the API (`ATTACK`, ...).
    pub fn code(self) -> &'static str {
        match self {
            Category::Attack => "ATTACK",
            Category::Intimidation => "INTIMIDATION",
            Category::Restraint => "RESTRAINT",
            Category::Dogeza => "DOGEZA",
            Category::Persistence => "PERSISTENCE",
            Category::DiscriminationSexual => "DISCRIMINATION_SEXUAL",
            Category::PersonalAttack => "PERSONAL_ATTACK",
            Category::OnlineExposure => "ONLINE_EXPOSURE",
            Category::ExcessiveDemand => "EXCESSIVE_DEMAND",
            Category::Other => "OTHER",
        }
    }

    /// The policy item this category serves, in the policy's own words.
    pub fn policy_item(self) -> &'static str {
        match self {
            Category::Attack => {
                "身体的または精神的な攻撃(暴行・傷害・脅迫・中傷・人格否定・名誉棄損・侮辱・暴言・罵声)"
            }
            Category::Intimidation => "威圧的な言動(恫喝・机をたたく・物を蹴る)",
            Category::Restraint => "拘束的な行動(不退去・居座り・監禁)",
            Category::Dogeza => "土下座の要求",
            Category::Persistence => "継続的な言動・執拗な言動",
            Category::DiscriminationSexual => "差別的な言動・性的な言動",
            Category::PersonalAttack => "従業者個人への攻撃・要求",
            Category::OnlineExposure => {
                "SNS/インターネットなどへの従業者個人情報の投稿・誹謗中傷・同意のない音声・画像の公開"
            }
            Category::ExcessiveDemand => {
                "不合理または過剰な商品交換・サービス・金銭補償・謝罪の要求"
            }
            Category::Other => "その他従業者の就業環境を著しく害する行為",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A string that is not one of the policy's codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (expected one of {expected})")]
pub struct UnknownCode {
    /// What was being parsed ("category" or "severity").
    pub kind: &'static str,
    /// The rejected text.
    pub value: String,
    /// The accepted codes, for the message.
    pub expected: &'static str,
}

impl FromStr for Category {
    type Err = UnknownCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL.into_iter().find(|c| c.code() == s).ok_or_else(|| UnknownCode {
            kind: "category",
            value: s.to_owned(),
            expected: "ATTACK, INTIMIDATION, RESTRAINT, DOGEZA, PERSISTENCE, \
                       DISCRIMINATION_SEXUAL, PERSONAL_ATTACK, ONLINE_EXPOSURE, \
                       EXCESSIVE_DEMAND, OTHER",
        })
    }
}

/// How serious an alert is; ordered, so `max` picks the worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// Rude or heated, worth a note.
    Low,
    /// A clear harassment indicator.
    Medium,
    /// Harassment that may justify refusing service.
    High,
    /// A threat to life, body or property; confinement; stalking.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 4] =
        [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    /// The policy code (`LOW` ... `CRITICAL`).
    pub fn code(self) -> &'static str {
        match self {
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }

    /// The next level up, for context rules that raise severity; `Critical` stays put
    /// because only a concrete threat earns it, never a marker such as お前.
    pub fn raised(self) -> Severity {
        match self {
            Severity::Low => Severity::Medium,
            Severity::Medium | Severity::High => Severity::High,
            Severity::Critical => Severity::Critical,
        }
    }

    /// The response the policy ladder prescribes at this severity.
    pub fn recommended_action(self) -> &'static str {
        match self {
            Severity::Low => "monitor: 記録して様子を見る",
            Severity::Medium => "supervisor attention: 責任者が通話を確認する",
            Severity::High => {
                "supervisor takes over or warns the customer: 責任者が交代または警告する"
            }
            Severity::Critical => {
                "end the conversation and involve legal or police: 対応を終了し弁護士・警察と連携する"
            }
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Severity {
    type Err = UnknownCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL.into_iter().find(|c| c.code() == s).ok_or_else(|| UnknownCode {
            kind: "severity",
            value: s.to_owned(),
            expected: "LOW, MEDIUM, HIGH, CRITICAL",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes round-trip, so lexicons, corpora and the API agree on spelling.
    #[test]
    fn codes_round_trip() {
        for c in Category::ALL {
            assert_eq!(c.code().parse::<Category>(), Ok(c));
        }
        for s in Severity::ALL {
            assert_eq!(s.code().parse::<Severity>(), Ok(s));
        }
        assert!("attack".parse::<Category>().is_err(), "codes are upper-case only");
        assert!("NONE".parse::<Severity>().is_err());
    }

    /// Raising never invents a CRITICAL: that takes a concrete threat.
    #[test]
    fn raised_stops_below_critical() {
        assert_eq!(Severity::Low.raised(), Severity::Medium);
        assert_eq!(Severity::High.raised(), Severity::High);
        assert_eq!(Severity::Critical.raised(), Severity::Critical);
    }
}

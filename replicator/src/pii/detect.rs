//! The PII classifiers: by column name (tokens of the name, with modifiers such as
//! `_verified` or `_count` that turn a PII word into something else), by column type,
//! and by sampled values (whole values and PII embedded in free text). Pure functions.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use regex::Regex;

use crate::civil_date::days_from_civil;

/// What kind of PII a column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiKind {
    Email,
    Phone,
    FirstName,
    LastName,
    FullName,
    Address,
    CardNumber,
    NationalId,
    IpAddress,
    BirthDate,
    /// Free text (notes, comments, JSON) with PII inside it.
    FreeText,
}

impl PiiKind {
    pub fn label(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::FirstName => "first_name",
            PiiKind::LastName => "last_name",
            PiiKind::FullName => "full_name",
            PiiKind::Address => "address",
            PiiKind::CardNumber => "card_number",
            PiiKind::NationalId => "national_id",
            PiiKind::IpAddress => "ip_address",
            PiiKind::BirthDate => "birth_date",
            PiiKind::FreeText => "free_text",
        }
    }

    /// How sampled values of this kind are described ("look like {plural}").
    fn plural(self) -> &'static str {
        match self {
            PiiKind::Email => "emails",
            PiiKind::Phone => "phone numbers",
            PiiKind::FirstName | PiiKind::LastName | PiiKind::FullName => "person names",
            PiiKind::Address => "street addresses",
            PiiKind::CardNumber => "card numbers (Luhn-valid)",
            PiiKind::NationalId => "SSNs",
            PiiKind::IpAddress => "IP addresses",
            PiiKind::BirthDate => "birth dates",
            PiiKind::FreeText => "free text",
        }
    }

    /// Whether a column of this type can hold this kind of PII.
    pub fn fits(self, class: TypeClass) -> bool {
        use TypeClass::*;
        match self {
            PiiKind::Email | PiiKind::FirstName | PiiKind::LastName | PiiKind::FullName | PiiKind::Address => class == Text,
            PiiKind::Phone | PiiKind::CardNumber | PiiKind::NationalId => matches!(class, Text | Integer | Numeric),
            PiiKind::IpAddress => matches!(class, Text | Inet),
            PiiKind::BirthDate => matches!(class, Text | Date | Timestamp),
            PiiKind::FreeText => matches!(class, Text | Json),
        }
    }
}

/// The broad class of a column's (base) type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeClass {
    Text,
    Integer,
    Numeric,
    Date,
    Timestamp,
    Inet,
    Json,
    Boolean,
    Other,
}

impl TypeClass {
    /// From the `typname` of the column's base type (domains resolved).
    pub fn of(typname: &str) -> TypeClass {
        match typname {
            "text" | "varchar" | "bpchar" | "name" | "citext" => TypeClass::Text,
            "int2" | "int4" | "int8" => TypeClass::Integer,
            "numeric" | "float4" | "float8" => TypeClass::Numeric,
            "date" => TypeClass::Date,
            "timestamp" | "timestamptz" => TypeClass::Timestamp,
            "inet" | "cidr" => TypeClass::Inet,
            "json" | "jsonb" => TypeClass::Json,
            "bool" => TypeClass::Boolean,
            _ => TypeClass::Other,
        }
    }

    /// Whether sampled values of this class can tell anything.
    pub fn sampled(self) -> bool {
        !matches!(self, TypeClass::Boolean | TypeClass::Other | TypeClass::Timestamp)
    }
}

/// The length limit of `character varying(n)` / `character(n)`, from format_type.
pub fn max_len(type_name: &str) -> Option<usize> {
    let rest = type_name.strip_prefix("character varying(").or_else(|| type_name.strip_prefix("character("))?;
    rest.strip_suffix(')')?.parse().ok()
}

/// A column's name split into lowercase words: `billingAddress_2` -> billing, address, 2.
pub fn tokens(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for ch in name.chars() {
        if !ch.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if ch.is_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = ch.is_lowercase() || ch.is_ascii_digit();
        cur.extend(ch.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Words that make a PII word describe something else: `email_verified`, `phone_count`,
/// `card_type`, `has_email`, `ip_country`.
const MODIFIERS: &[&str] = &[
    "id",
    "ids",
    "uuid",
    "count",
    "cnt",
    "verified",
    "confirmed",
    "valid",
    "validated",
    "type",
    "kind",
    "status",
    "flag",
    "enabled",
    "disabled",
    "hash",
    "hashed",
    "digest",
    "encrypted",
    "enc",
    "token",
    "opt",
    "optin",
    "optout",
    "consent",
    "format",
    "template",
    "domain",
    "provider",
    "bounce",
    "bounced",
    "sent",
    "updated",
    "created",
    "changed",
    "code",
    "country",
    "prefix",
    "extension",
    "ext",
    "last4",
    "four",
    "mask",
    "masked",
    "length",
    "len",
    "required",
    "preference",
    "preferences",
    "visible",
    "is",
    "has",
    "brand",
    "expiry",
    "exp",
    "expires",
    "version",
    "app",
    "device",
    "platform",
    "os",
    "carrier",
    "region",
    "city",
    "state",
    "zip",
    "fingerprint",
    "salt",
    "key",
];

const FREE_TEXT: &[&str] = &[
    "note",
    "notes",
    "comment",
    "comments",
    "description",
    "bio",
    "biography",
    "message",
    "messages",
    "msg",
    "body",
    "remark",
    "remarks",
    "memo",
    "about",
    "details",
    "feedback",
    "summary",
    "text",
    "content",
    "instructions",
];

const PERSON: &[&str] = &[
    "full",
    "contact",
    "customer",
    "person",
    "holder",
    "cardholder",
    "recipient",
    "billing",
    "shipping",
    "legal",
    "patient",
    "employee",
    "owner",
    "member",
    "client",
    "guardian",
    "emergency",
    "spouse",
    "parent",
    "real",
    "display",
    "maiden",
    "birth",
];

/// The kind of PII a column's name suggests, if any. `FreeText` means "may hold PII
/// in free text": only sampled values can confirm it.
pub fn by_name(name: &str) -> Option<PiiKind> {
    let t = tokens(name);
    let has = |w: &str| t.iter().any(|x| x == w);
    let starts = |p: &str| t.iter().any(|x| x.starts_with(p));
    let joined = t.join("_");
    // Identity numbers first: their names end in `id`, a modifier elsewhere.
    if has("ssn")
        || joined.contains("social_security")
        || starts("passport")
        || joined.contains("national_id")
        || has("nationalid")
        || joined.contains("tax_id")
        || has("taxid")
        || has("nino")
        || joined.contains("driver_licen")
        || joined.contains("drivers_licen")
        || joined.contains("driving_licen")
    {
        return Some(PiiKind::NationalId);
    }
    if t.iter().any(|x| MODIFIERS.contains(&x.as_str())) {
        return None;
    }
    if has("email") || has("emails") || has("mail") && !has("box") || starts("emailaddr") || joined == "e_mail" {
        return Some(PiiKind::Email);
    }
    if has("ip")
        || has("ipv4")
        || has("ipv6")
        || starts("ipaddr")
        || joined.contains("remote_addr")
        || joined.contains("client_addr")
        || joined.contains("forwarded_for")
    {
        return Some(PiiKind::IpAddress);
    }
    let card_word = has("card") || has("cc") || has("credit");
    if has("creditcard")
        || starts("cardnum")
        || starts("ccnum")
        || has("pan")
        || joined.contains("credit_card")
        || card_word && (has("number") || has("num") || has("no") || has("nr"))
    {
        return Some(PiiKind::CardNumber);
    }
    if has("dob") || starts("birth") || joined.contains("of_birth") || starts("dateofbirth") || joined.starts_with("born_") {
        return Some(PiiKind::BirthDate);
    }
    if starts("phone")
        || starts("telephone")
        || has("tel")
        || starts("mobile")
        || has("cell")
        || starts("cellphone")
        || has("fax")
        || has("msisdn")
    {
        return Some(PiiKind::Phone);
    }
    if has("firstname")
        || has("forename")
        || has("fname")
        || has("givenname")
        || has("middlename")
        || (has("first") || has("given") || has("middle")) && has("name")
    {
        return Some(PiiKind::FirstName);
    }
    if has("lastname")
        || has("surname")
        || has("lname")
        || has("familyname")
        || has("maidenname")
        || (has("last") || has("family") || has("maiden")) && has("name")
    {
        return Some(PiiKind::LastName);
    }
    if has("fullname") || has("displayname") || has("name") && t.iter().any(|x| PERSON.contains(&x.as_str())) {
        return Some(PiiKind::FullName);
    }
    let not_postal = ["mac", "wallet", "contract", "server", "host", "url", "web", "website", "link", "memory", "mem", "bitcoin", "eth"];
    if (starts("address") || starts("addr") || has("street") || has("streetaddress")) && !t.iter().any(|x| not_postal.contains(&x.as_str()))
    {
        return Some(PiiKind::Address);
    }
    if t.iter().any(|x| FREE_TEXT.contains(&x.as_str())) {
        return Some(PiiKind::FreeText);
    }
    None
}

/// A lazily compiled built-in pattern.
macro_rules! pattern {
    ($name:ident, $re:expr) => {
        fn $name() -> &'static Regex {
            static R: OnceLock<Regex> = OnceLock::new();
            R.get_or_init(|| Regex::new($re).expect("a valid built-in pattern"))
        }
    };
}

pattern!(email_re, r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}");
pattern!(
    address_re,
    r"(?i)\b\d{1,6}[A-Za-z]?\s+(?:[A-Za-z0-9.'-]+\s+){1,4}(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|terrace|parkway|pkwy|circle|cir|highway|hwy|square|sq|trail|trl|crescent|close|alley|plaza)\b|(?i)\bp\.?\s?o\.?\s+box\s+\d+"
);
pattern!(phone_candidate_re, r"\+?\(?\d[\d ().-]{5,20}\d");
pattern!(ssn_re, r"\b(\d{3})-(\d{2})-(\d{4})\b");
pattern!(card_candidate_re, r"\b\d(?:[ -]?\d){12,18}\b");
pattern!(ipv4_re, r"\b\d{1,3}(?:\.\d{1,3}){3}\b");
pattern!(ipv6_re, r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}");
pattern!(date_like_re, r"^\d{1,4}[-./]\d{1,2}[-./]\d{1,4}$");

pub fn is_email(v: &str) -> bool {
    email_re().find(v).is_some_and(|m| m.start() == 0 && m.end() == v.len())
}

/// The Luhn checksum of a string of digits.
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

/// 13–19 digits (single spaces or dashes between), Luhn-valid, a card network's first digit.
pub fn is_card_number(v: &str) -> bool {
    let v = v.trim();
    if v.is_empty() || !v.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '-') || v.contains("  ") || v.contains("--") {
        return false;
    }
    let digits: String = v.chars().filter(char::is_ascii_digit).collect();
    (13..=19).contains(&digits.len()) && (b'2'..=b'6').contains(&digits.as_bytes()[0]) && luhn(&digits)
}

/// A US social security number, ddd-dd-dddd, with an area, group and serial in use.
pub fn is_ssn(v: &str) -> bool {
    ssn_re().captures(v.trim()).is_some_and(|c| c.get(0).is_some_and(|m| m.len() == v.trim().len()) && ssn_parts_ok(&c))
}

fn ssn_parts_ok(c: &regex::Captures) -> bool {
    let (area, group, serial) = (&c[1], &c[2], &c[3]);
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// An IPv4 or IPv6 address, with an optional /prefix (postgres' inet text form).
pub fn is_ip(v: &str) -> bool {
    let v = v.trim();
    let addr = match v.rsplit_once('/') {
        Some((a, bits)) if !bits.is_empty() && bits.len() <= 3 && bits.bytes().all(|b| b.is_ascii_digit()) => a,
        _ => v,
    };
    addr.parse::<Ipv4Addr>().is_ok() || addr.contains(':') && addr.parse::<Ipv6Addr>().is_ok()
}

/// A phone number: 7–15 digits, a leading `+` or separators between digit groups;
/// not a date, a ZIP+4 code, an IP address, an SSN, a card number or a decimal number.
pub fn is_phone(v: &str) -> bool {
    let v = v.trim();
    let lower = v.to_ascii_lowercase();
    let v = match lower.find(" ext").or_else(|| lower.find(" x")) {
        Some(i) if lower[i..].trim_start_matches([' ', 'e', 'x', 't', '.']).bytes().all(|b| b.is_ascii_digit()) => &v[..i],
        _ => v,
    };
    if v.is_empty() || !v.chars().all(|c| c.is_ascii_digit() || " ()-.+".contains(c)) || v[1..].contains('+') {
        return false;
    }
    let digits = v.chars().filter(char::is_ascii_digit).count();
    let groups = v.split(|c: char| !c.is_ascii_digit()).filter(|g| !g.is_empty()).count();
    let only_dots = !v.contains([' ', '-', '(', ')', '+']);
    (7..=15).contains(&digits)
        && (v.starts_with('+') || groups >= 2)
        && !(only_dots && groups < 3)
        && !date_like_re().is_match(v)
        && !(v.len() == 10 && v.as_bytes()[5] == b'-' && groups == 2) // a ZIP+4 code
        && !is_ip(v)
        && !is_ssn(v)
        && !is_card_number(v)
}

/// Whether a value is a date (YYYY-MM-DD...) `age` years before `today` (days since
/// 1970-01-01) with 10 <= age <= 110: a plausible birth date.
pub fn is_birth_date(v: &str, today: i64) -> Option<i64> {
    let b = v.trim().as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<i64>().ok();
    let (y, m, d) = (num(&b[..4])?, num(&b[5..7])?, num(&b[8..10])?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let age = (today - days_from_civil(y, m, d)) as f64 / 365.25;
    (10.0..=110.0).contains(&age).then_some(y)
}

/// Whole-value classification of one sampled value (names and birth dates aside).
pub fn classify_value(v: &str) -> Option<PiiKind> {
    let v = v.trim();
    if is_email(v) {
        Some(PiiKind::Email)
    } else if is_ip(v) {
        Some(PiiKind::IpAddress)
    } else if is_card_number(v) {
        Some(PiiKind::CardNumber)
    } else if is_ssn(v) {
        Some(PiiKind::NationalId)
    } else if is_phone(v) {
        Some(PiiKind::Phone)
    } else if address_re().find(v).is_some_and(|m| m.start() == 0) {
        Some(PiiKind::Address)
    } else {
        None
    }
}

/// The kinds of PII found inside a longer text.
pub fn embedded(v: &str) -> BTreeSet<PiiKind> {
    let mut out = BTreeSet::new();
    if email_re().is_match(v) {
        out.insert(PiiKind::Email);
    }
    if card_candidate_re().find_iter(v).any(|m| is_card_number(m.as_str())) {
        out.insert(PiiKind::CardNumber);
    }
    if ssn_re().captures_iter(v).any(|c| ssn_parts_ok(&c)) {
        out.insert(PiiKind::NationalId);
    }
    if ipv4_re().find_iter(v).any(|m| is_ip(m.as_str())) || ipv6_re().find_iter(v).any(|m| m.as_str().len() >= 3 && is_ip(m.as_str())) {
        out.insert(PiiKind::IpAddress);
    }
    if phone_candidate_re().find_iter(v).any(|m| is_phone(m.as_str())) {
        out.insert(PiiKind::Phone);
    }
    if address_re().is_match(v) {
        out.insert(PiiKind::Address);
    }
    out
}

const FIRST_NAMES: &str = "james mary robert patricia john jennifer michael linda david elizabeth william barbara richard susan \
joseph jessica thomas sarah charles karen christopher lisa daniel nancy matthew betty anthony margaret mark sandra donald ashley \
steven kimberly paul emily andrew donna joshua michelle kenneth carol kevin amanda brian dorothy george melissa timothy deborah \
ronald stephanie edward rebecca jason sharon jeffrey laura ryan cynthia jacob kathleen gary amy nicholas angela eric shirley \
jonathan anna stephen brenda larry pamela justin emma scott nicole brandon helen benjamin samantha samuel katherine gregory \
christine alexander debra frank rachel patrick carolyn raymond janet jack catherine dennis maria jerry heather tyler diane aaron \
ruth jose julie adam olivia nathan joyce henry virginia douglas victoria zachary kelly peter lauren kyle christina ethan joan \
walter evelyn noah judith jeremy megan christian andrea keith cheryl roger hannah terry jacqueline gerald martha harold gloria \
sean teresa austin ann carl sara arthur madison lawrence frances dylan kathryn jesse janice jordan jean bryan abigail billy \
alice joe julia bruce judy gabriel sophia logan grace albert denise willie amber alan doris juan marilyn wayne danielle elijah \
beverly randy isabella roy theresa vincent diana ralph natalie eugene brittany russell charlotte bobby marie mason kayla philip \
alexis louis lori liam ava lucas mia oliver amelia mateo luna leo chloe ada ben bianca carla chen dara elena emil eva farah felix \
hana ivan jonas kai lena lucia maya nadia olga omar paula priya rafael rosa sami tomas uma victor wen yara yusuf zoe jane john \
ali fatima mohammed wei yuki hiroshi sofia lukas anna marco giulia pierre camille hans anja lars ingrid";

const LAST_NAMES: &str = "smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez gonzalez \
wilson anderson thomas taylor moore jackson martin lee perez thompson white harris sanchez clark ramirez lewis robinson walker \
young allen king wright scott torres nguyen hill flores green adams nelson baker hall rivera campbell mitchell carter roberts \
gomez phillips evans turner diaz parker cruz edwards collins reyes stewart morris morales murphy cook rogers gutierrez ortiz \
morgan cooper peterson bailey reed kelly howard ramos kim cox ward richardson watson brooks chavez wood james bennett gray \
mendoza ruiz hughes price alvarez castillo sanders patel myers long ross foster jimenez powell jenkins perry russell sullivan \
bell coleman butler henderson barnes gonzales fisher vasquez simmons romero jordan patterson alexander hamilton graham reynolds \
griffin wallace moreno west cole hayes bryant herrera gibson ellis tran medina aguilar stevens murray ford castro marshall owens \
harrison fernandez mcdonald woods washington kennedy wells vargas henry chen freeman webb tucker guzman burns crawford olson \
simpson porter hunter gordon mendez silva shaw snyder mason dixon munoz hunt hicks holmes palmer wagner black robertson boyd \
rose stone salazar fox warren mills meyer rice schmidt garza daniels ferguson nichols stephens soto weaver ryan gardner payne \
grant dunn kelley spencer hawkins arnold pierce vazquez hansen peters santos hart bradley knight elliott almeida berg costa \
dubois eriksen fischer haddad ito jensen kowalski larsen moreau novak okafor petrov quinn rossi tanaka ueda varga weber xu \
yilmaz zhang doe muller schneider wang li liu yang huang zhao wu zhou sato suzuki takahashi watanabe kumar singh sharma khan";

fn name_sets() -> &'static (HashSet<&'static str>, HashSet<&'static str>) {
    static S: OnceLock<(HashSet<&'static str>, HashSet<&'static str>)> = OnceLock::new();
    S.get_or_init(|| (FIRST_NAMES.split_whitespace().collect(), LAST_NAMES.split_whitespace().collect()))
}

/// The shape of a person's name: 1–3 capitalized words of letters (with ' or -).
fn name_shape(v: &str) -> Option<Vec<&str>> {
    let words: Vec<&str> = v.split_whitespace().collect();
    let ok = |w: &&str| {
        let mut cs = w.chars();
        cs.next().is_some_and(char::is_uppercase)
            && w.chars().count() >= 2
            && w.chars().all(|c| c.is_alphabetic() || c == '\'' || c == '-' || c == '.')
            && w.chars().skip(1).any(char::is_lowercase)
    };
    (!words.is_empty() && words.len() <= 3 && words.iter().all(ok)).then_some(words)
}

/// What sampled values say about a column: a whole-value kind with its evidence, or
/// PII found inside free text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueEvidence {
    pub kind: PiiKind,
    pub matched: usize,
    pub total: usize,
    pub text: String,
}

/// Classifies a column by its non-null sampled values (`today`: days since 1970-01-01).
/// A whole-value kind needs 60% of the values (names: 80% shaped like names and 25%
/// holding a common first or last name; birth dates: 90% plausible, at least 5 values
/// over 3 distinct years); PII inside free text needs one value in a hundred.
pub fn by_values(values: &[String], class: TypeClass, today: i64) -> Option<ValueEvidence> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let evidence = |kind: PiiKind, matched: usize, text: String| Some(ValueEvidence { kind, matched, total: n, text });
    if matches!(class, TypeClass::Date | TypeClass::Text) {
        let years: Vec<i64> = values.iter().filter_map(|v| is_birth_date(v, today)).collect();
        let distinct: BTreeSet<i64> = years.iter().copied().collect();
        if n >= 5 && years.len() * 10 >= n * 9 && distinct.len() >= 3 {
            let text = format!("{}/{n} sampled values look like birth dates (ages 10-110, {} distinct years)", years.len(), distinct.len());
            return evidence(PiiKind::BirthDate, years.len(), text);
        }
    }
    match class {
        TypeClass::Integer | TypeClass::Numeric => {
            let cards = values.iter().filter(|v| is_card_number(v)).count();
            if cards * 10 >= n * 6 {
                return evidence(PiiKind::CardNumber, cards, format!("{cards}/{n} sampled values look like card numbers (Luhn-valid)"));
            }
            return None;
        }
        TypeClass::Text | TypeClass::Json => {}
        _ => return None,
    }
    if class == TypeClass::Text {
        let mut counts: BTreeMap<PiiKind, usize> = BTreeMap::new();
        let (mut shaped, mut known, mut multi, mut first, mut last) = (0, 0, 0, 0, 0);
        let (firsts, lasts) = name_sets();
        for v in values {
            if let Some(k) = classify_value(v) {
                *counts.entry(k).or_default() += 1;
            }
            if let Some(words) = name_shape(v) {
                shaped += 1;
                multi += usize::from(words.len() > 1);
                let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
                let f = lower.iter().any(|w| firsts.contains(w.as_str()));
                let l = lower.iter().any(|w| lasts.contains(w.as_str()));
                known += usize::from(f || l);
                first += usize::from(f);
                last += usize::from(l);
            }
        }
        if let Some((&kind, &c)) = counts.iter().max_by_key(|(_, c)| **c) {
            if c * 10 >= n * 6 {
                return evidence(kind, c, format!("{c}/{n} sampled values look like {}", kind.plural()));
            }
        }
        if shaped * 10 >= n * 8 && known * 4 >= n {
            let kind = if multi * 2 >= shaped {
                PiiKind::FullName
            } else if first >= last {
                PiiKind::FirstName
            } else {
                PiiKind::LastName
            };
            let text = format!("{shaped}/{n} sampled values look like person names ({known} hold common first or last names)");
            return evidence(kind, shaped, text);
        }
    }
    let mut found: BTreeMap<PiiKind, usize> = BTreeMap::new();
    let mut with_pii = 0;
    for v in values {
        let e = embedded(v);
        with_pii += usize::from(!e.is_empty());
        for k in e {
            *found.entry(k).or_default() += 1;
        }
    }
    if with_pii > 0 && with_pii * 100 >= n {
        let what: Vec<String> = found.iter().map(|(k, c)| format!("{} in {c}", k.plural())).collect();
        let text = format!("{with_pii}/{n} sampled values contain PII ({})", what.join(", "));
        return evidence(PiiKind::FreeText, with_pii, text);
    }
    None
}

/// A column's guess: its kind and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guess {
    pub kind: PiiKind,
    pub evidence: String,
}

/// Combines name, type and values: a name hint of a kind the type can hold wins (the
/// values are cited either way) unless the values clearly show another kind (60% of
/// them, and under 10% look like the name's kind); then an `inet` type; then
/// whole-value evidence; then PII inside free text. `values`: non-null samples.
pub fn judge(name: &str, type_name: &str, class: TypeClass, values: &[String], today: i64) -> Option<Guess> {
    let hint = by_name(name).filter(|k| k.fits(class));
    let seen = by_values(values, class, today);
    let n = values.len();
    let sampled = |kind: PiiKind| -> String {
        if values.is_empty() {
            return if class.sampled() { "no non-null values sampled".into() } else { format!("type {type_name}") };
        }
        let own = format!("{}/{n} sampled values look like {}", matches(kind, values, today), kind.plural());
        match &seen {
            Some(e) if e.kind == kind => e.text.clone(),
            Some(e) => format!("{own}; but {}", e.text),
            None => own,
        }
    };
    let person = |k: PiiKind| matches!(k, PiiKind::FirstName | PiiKind::LastName | PiiKind::FullName);
    if let Some(kind) = hint.filter(|k| *k != PiiKind::FreeText) {
        let overruled = seen.as_ref().filter(|e| {
            e.kind != kind && e.kind != PiiKind::FreeText && !(person(e.kind) && person(kind)) && matches(kind, values, today) * 10 < n
        });
        return Some(match overruled {
            Some(e) => Guess { kind: e.kind, evidence: format!("{}; the name '{name}' suggests {}", e.text, kind.label()) },
            None => Guess { kind, evidence: format!("name '{name}'; {}", sampled(kind)) },
        });
    }
    if class == TypeClass::Inet && type_name == "inet" {
        return Some(Guess { kind: PiiKind::IpAddress, evidence: format!("type inet; {}", sampled(PiiKind::IpAddress)) });
    }
    let seen = seen?;
    let prefix = match hint {
        Some(PiiKind::FreeText) => format!("name '{name}' (free text); "),
        _ => String::new(),
    };
    Some(Guess { kind: seen.kind, evidence: format!("{prefix}{}", seen.text) })
}

/// How many sampled values look like `kind` (for a kind the name suggested).
fn matches(kind: PiiKind, values: &[String], today: i64) -> usize {
    let count = |f: &dyn Fn(&str) -> bool| values.iter().filter(|v| f(v)).count();
    match kind {
        PiiKind::FirstName | PiiKind::LastName | PiiKind::FullName => count(&|v| name_shape(v).is_some()),
        PiiKind::BirthDate => count(&|v| is_birth_date(v, today).is_some()),
        PiiKind::CardNumber => count(&is_card_number),
        PiiKind::NationalId => count(&is_ssn),
        PiiKind::IpAddress => count(&is_ip),
        PiiKind::FreeText => count(&|v| !embedded(v).is_empty()),
        k => count(&|v| classify_value(v) == Some(k)),
    }
}

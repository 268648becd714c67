//! Word lists the name and address transformers draw from.

pub const FIRST_NAMES: &[&str] = &[
    "Ada", "Alan", "Alice", "Amir", "Anna", "Ben", "Bianca", "Carla", "Chen", "Dara", "David", "Elena", "Emil", "Eva", "Farah", "Felix",
    "Grace", "Hana", "Ivan", "Jonas", "Julia", "Kai", "Lena", "Liam", "Lucia", "Maya", "Mateo", "Nadia", "Noah", "Olga", "Omar", "Paula",
    "Priya", "Rafael", "Rosa", "Sami", "Sara", "Tomas", "Uma", "Victor", "Wen", "Yara", "Yusuf", "Zoe",
];

pub const LAST_NAMES: &[&str] = &[
    "Almeida", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Jensen", "Kowalski", "Larsen", "Moreau",
    "Novak", "Okafor", "Petrov", "Quinn", "Rossi", "Schmidt", "Tanaka", "Ueda", "Varga", "Weber", "Xu", "Yilmaz", "Zhang", "Silva",
    "Nguyen", "Kim", "Lopez",
];

pub const STREETS: &[&str] =
    &["Maple", "Oak", "Cedar", "Elm", "Pine", "Birch", "Willow", "Lake", "Hill", "River", "Park", "Station", "Mill"];

pub const STREET_SUFFIXES: &[&str] = &["St", "Ave", "Rd", "Ln", "Way", "Blvd"];

pub const CITIES: &[&str] = &["Springfield", "Riverton", "Lakeside", "Fairview", "Kingston", "Ashford", "Brookfield", "Milton", "Oakridge"];

//! serde support for enums written as `(our tag: u8, payload)`: postcard then encodes
//! the tag byte followed by the payload's fields, and the tag is a constant we chose
//! (see [`super::tags`]) instead of the variant's position in the Rust declaration.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serializes one variant as its tag, then its payload (`()` for a unit variant).
pub(crate) fn serialize<S: Serializer, P: Serialize + ?Sized>(s: S, tag: u8, payload: &P) -> Result<S::Ok, S::Error> {
    let mut t = s.serialize_tuple(2)?;
    t.serialize_element(&tag)?;
    t.serialize_element(payload)?;
    t.end()
}

/// An enum that decodes its payload once its tag is known.
pub(crate) trait TaggedEnum: Sized {
    const NAME: &'static str;
    fn decode_variant<'de, A: SeqAccess<'de>>(tag: u8, seq: &mut A) -> Result<Self, A::Error>;
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: TaggedEnum>(d: D) -> Result<T, D::Error> {
    struct V<T>(PhantomData<T>);
    impl<'de, T: TaggedEnum> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a tagged {}", T::NAME)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
            let tag: u8 = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
            T::decode_variant(tag, &mut seq)
        }
    }
    d.deserialize_tuple(2, V(PhantomData))
}

/// The payload of the variant whose tag was just read.
pub(crate) fn payload<'de, A: SeqAccess<'de>, P: Deserialize<'de>>(seq: &mut A) -> Result<P, A::Error> {
    seq.next_element()?.ok_or_else(|| de::Error::custom("variant payload missing"))
}

thread_local! {
    /// The last unknown-tag message on this thread. postcard drops the text of a
    /// custom error (it reports only "serde deserialization error"), so the decoder
    /// that called postcard ([`super::postcard_exact`]) takes it back from here.
    static UNKNOWN_TAG: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

pub(crate) fn unknown<E: de::Error>(name: &str, tag: u8) -> E {
    let message = format!("unknown {name} tag {tag} (written by a newer pgbranch?)");
    UNKNOWN_TAG.with(|m| *m.borrow_mut() = Some(message.clone()));
    E::custom(message)
}

/// Clears, or takes, the message of the last [`unknown`] on this thread.
pub(crate) fn take_unknown_tag() -> Option<String> {
    UNKNOWN_TAG.with(|m| m.borrow_mut().take())
}

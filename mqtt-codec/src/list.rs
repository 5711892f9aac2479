//! Payload lists (SUBSCRIBE filters, UNSUBSCRIBE filters, SUBACK/UNSUBACK reason codes):
//! validated on decode, then read in place by an iterator.

use core::fmt;

use crate::reader::Reader;
use crate::{PacketType, ReasonCode, Subscription, SubscriptionOptions};

/// An element of a payload list, re-read from bytes that decoding already validated.
pub trait ListItem<'a>: Copy + 'a + sealed::Sealed {
    #[doc(hidden)]
    fn reread(buf: &mut &'a [u8]) -> Option<Self>;
}

/// Runs `f` on a reader over `buf` and advances `buf` past what it read.
fn with_reader<'a, T>(
    buf: &mut &'a [u8],
    f: impl FnOnce(&mut Reader<'a>) -> Option<T>,
) -> Option<T> {
    // The packet type only labels errors, and validated bytes have none.
    let mut r = Reader::new(buf, PacketType::Subscribe);
    let v = f(&mut r);
    *buf = r.rest();
    v
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for &str {}
    impl Sealed for crate::Subscription<'_> {}
    impl Sealed for crate::ReasonCode {}
}

impl<'a> ListItem<'a> for &'a str {
    fn reread(buf: &mut &'a [u8]) -> Option<Self> {
        with_reader(buf, |r| r.utf8().ok())
    }
}

impl<'a> ListItem<'a> for Subscription<'a> {
    fn reread(buf: &mut &'a [u8]) -> Option<Self> {
        with_reader(buf, |r| {
            let filter = r.utf8().ok()?;
            // 5.0 rules read a validated 3.1.1 byte the same way: its upper bits are zero.
            let options =
                SubscriptionOptions::from_byte(r.u8().ok()?, crate::ProtocolVersion::V5).ok()?;
            Some(Subscription { filter, options })
        })
    }
}

impl<'a> ListItem<'a> for ReasonCode {
    fn reread(buf: &mut &'a [u8]) -> Option<Self> {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        ReasonCode::from_u8(b)
    }
}

/// A list in a packet's payload: either the validated wire bytes of a decoded packet or a
/// slice given by the caller to encode.
///
/// ```
/// use mqtt_codec::{List, QoS, Subscription, SubscriptionOptions};
/// let subs = [Subscription { filter: "a/+", options: SubscriptionOptions::qos(QoS::AtLeastOnce) }];
/// let list = List::new(&subs);
/// assert_eq!(list.iter().next().unwrap().filter, "a/+");
/// ```
#[derive(Clone, Copy)]
pub struct List<'a, T>(Repr<'a, T>);

#[derive(Clone, Copy)]
enum Repr<'a, T> {
    Wire(&'a [u8]),
    Slice(&'a [T]),
}

impl<'a, T: ListItem<'a>> List<'a, T> {
    /// A list of items to encode.
    pub const fn new(items: &'a [T]) -> Self {
        Self(Repr::Slice(items))
    }

    pub(crate) const fn wire(bytes: &'a [u8]) -> Self {
        Self(Repr::Wire(bytes))
    }

    /// The items in order.
    pub fn iter(&self) -> ListIter<'a, T> {
        ListIter(match self.0 {
            Repr::Wire(b) => IterRepr::Wire(b),
            Repr::Slice(s) => IterRepr::Slice(s.iter()),
        })
    }

    /// How many items there are (walks a decoded list).
    pub fn len(&self) -> usize {
        match self.0 {
            Repr::Slice(s) => s.len(),
            Repr::Wire(_) => self.iter().count(),
        }
    }

    /// Whether the list is empty (a decoded list never is).
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl<'a, T: ListItem<'a>> IntoIterator for &List<'a, T> {
    type Item = T;
    type IntoIter = ListIter<'a, T>;
    fn into_iter(self) -> ListIter<'a, T> {
        self.iter()
    }
}

/// Iterator over a [`List`].
#[derive(Clone)]
pub struct ListIter<'a, T>(IterRepr<'a, T>);

#[derive(Clone)]
enum IterRepr<'a, T> {
    Wire(&'a [u8]),
    Slice(core::slice::Iter<'a, T>),
}

impl<'a, T: ListItem<'a>> Iterator for ListIter<'a, T> {
    type Item = T;
    #[inline]
    fn next(&mut self) -> Option<T> {
        match &mut self.0 {
            IterRepr::Wire([]) => None,
            IterRepr::Wire(r) => T::reread(r),
            IterRepr::Slice(s) => s.next().copied(),
        }
    }
}

impl<'a, T: ListItem<'a> + PartialEq> PartialEq for List<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}
impl<'a, T: ListItem<'a> + Eq> Eq for List<'a, T> {}

impl<'a, T: ListItem<'a> + fmt::Debug> fmt::Debug for List<'a, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

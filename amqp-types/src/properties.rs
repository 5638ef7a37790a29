//! The content properties of the `basic` class, generated from
//! [`for_each_basic_property!`](crate::for_each_basic_property).

use crate::{FieldTable, ShortString};

macro_rules! define_properties {
    ($( $f:ident : $ty:ident = $name:literal @ $bit:literal ),* $(,)?) => {
        /// The 14 properties a `basic` content header may carry; each is
        /// present or absent.
        ///
        /// ```
        /// use amqp_types::{BasicProperties, ShortString};
        /// let p = BasicProperties {
        ///     content_type: Some(ShortString::from_static("text/plain")),
        ///     delivery_mode: Some(2),
        ///     ..Default::default()
        /// };
        /// assert_eq!(p.flags(), 0x9000);
        /// ```
        #[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub struct BasicProperties {
            $(
                #[doc = concat!("`", $name, "` (flag bit ", stringify!($bit), ").")]
                pub $f: Option<$ty>,
            )*
        }

        impl BasicProperties {
            /// The spec names of the properties, in wire order.
            pub const NAMES: [&'static str; 14] = [$($name),*];

            /// The property-flags word announcing the present properties.
            pub fn flags(&self) -> u16 {
                0 $( | if self.$f.is_some() { 1u16 << $bit } else { 0 } )*
            }

            /// The flag bits that name a property.
            pub const KNOWN_FLAGS: u16 = 0 $( | (1u16 << $bit) )*;

            /// How many properties are present.
            pub fn count(&self) -> u32 {
                self.flags().count_ones()
            }
        }
    };
}

crate::for_each_basic_property!(define_properties);

impl BasicProperties {
    /// `delivery-mode` 2: the message is persistent.
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_cover_bits_2_to_15() {
        assert_eq!(BasicProperties::KNOWN_FLAGS, 0xfffc);
        assert_eq!(BasicProperties::default().flags(), 0);
        let p = BasicProperties {
            cluster_id: Some(ShortString::EMPTY),
            headers: Some(FieldTable::new()),
            ..Default::default()
        };
        assert_eq!(p.flags(), 0x2004);
        assert_eq!(p.count(), 2);
    }
}

//! Closed sets of named values: policies, reasons, endpoints, results.
//!
//! [`closed_enum!`](crate::closed::closed_enum) declares such an enum with
//! each value's name written once, beside the value, and derives from that
//! one list everything that enumerates the set: the serde name, `ALL` (in
//! declaration order, so `ALL[v.index()] == v`), `name()`, `index()` and
//! `from_name()`. A new value is then in every list, named everywhere,
//! counted by every metric indexed by it; what must decide about it is an
//! exhaustive `match`, which stops compiling until it does.

/// Declares a `Copy` enum of unit values, each `Value = "name"`, with
/// `Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize` and
/// the name as its serde name; more derives may be given as attributes.
macro_rules! closed_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $enum:ident {
            $(
                $(#[$value_meta:meta])*
                $value:ident = $name:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize,
        )]
        $vis enum $enum {
            $(
                $(#[$value_meta])*
                #[serde(rename = $name)]
                $value,
            )+
        }

        #[allow(dead_code)]
        impl $enum {
            /// Every value, in declaration order.
            pub const ALL: [$enum; [$($name),+].len()] = [$($enum::$value),+];

            /// The value's name: on the wire, in metric labels and on the
            /// command line.
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$value => $name,)+
                }
            }

            /// The value's position in [`Self::ALL`], for arrays indexed by it.
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The value named `name`.
            pub fn from_name(name: &str) -> Option<$enum> {
                match name {
                    $($name => Some($enum::$value),)+
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Display for $enum {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $enum {
            type Err = String;

            /// Reads a name, as on the command line.
            fn from_str(name: &str) -> ::std::result::Result<$enum, String> {
                $enum::from_name(name).ok_or_else(|| {
                    let names: Vec<&str> = $enum::ALL.iter().map(|v| v.name()).collect();
                    format!("must be one of {}, got {name:?}", names.join(", "))
                })
            }
        }
    };
}

pub(crate) use closed_enum;

#[cfg(test)]
mod tests {
    closed_enum! {
        /// A set for the tests.
        #[derive(Default)]
        enum Fruit {
            #[default]
            Apple = "apple",
            /// With a doc comment.
            BloodOrange = "blood_orange",
            Pear = "pear",
        }
    }

    #[test]
    fn a_closed_enum_lists_names_and_indexes_its_values_once() {
        assert_eq!(Fruit::ALL, [Fruit::Apple, Fruit::BloodOrange, Fruit::Pear]);
        for (i, fruit) in Fruit::ALL.into_iter().enumerate() {
            assert_eq!(fruit.index(), i);
            assert_eq!(
                serde_json::to_value(fruit).unwrap(),
                serde_json::Value::from(fruit.name())
            );
            assert_eq!(Fruit::from_name(fruit.name()), Some(fruit));
            assert_eq!(fruit.name().parse::<Fruit>(), Ok(fruit));
            assert_eq!(fruit.to_string(), fruit.name());
        }
        assert_eq!(
            serde_json::from_str::<Fruit>("\"blood_orange\"").unwrap(),
            Fruit::BloodOrange
        );
        assert_eq!(Fruit::from_name("Pear"), None);
        assert_eq!(
            "kiwi".parse::<Fruit>(),
            Err("must be one of apple, blood_orange, pear, got \"kiwi\"".to_string())
        );
        assert_eq!(Fruit::default(), Fruit::Apple);
    }
}

//! Task arrays: many tasks submitted as one, each with its own index
//! (Slurm's `--array`, HyperQueue's `--array`).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ArrayId, ValidationError};

/// The most tasks one array may hold.
pub const MAX_ARRAY_TASKS: usize = 100_000;

/// The environment variable that holds a task's index in its array.
pub const ARRAY_INDEX_ENV: &str = "CLOUDAI_ARRAY_INDEX";

/// The environment variable that holds a task's array id.
pub const ARRAY_ID_ENV: &str = "CLOUDAI_ARRAY_ID";

/// A task's place in an array.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArrayMember {
    /// The array, which every member shares.
    pub id: ArrayId,
    /// The task's index (`CLOUDAI_ARRAY_INDEX`).
    pub index: u32,
    /// At most this many of the array's members are assigned or running
    /// at once (`--array 1-100%10`); the others wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The indices of an array, as Slurm writes them: comma-separated items,
/// each an index (`7`), a range (`1-10`) or a range with a step (`0-30:10`).
/// Kept sorted, each index once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayIndices(BTreeSet<u32>);

impl ArrayIndices {
    /// The indices, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// How many tasks the array has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it has none (never true of a parsed array).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn bad(spec: &str, reason: impl Into<String>) -> ValidationError {
    ValidationError::Invalid {
        field: "array",
        reason: format!("{spec:?}: {}", reason.into()),
    }
}

impl std::str::FromStr for ArrayIndices {
    type Err = ValidationError;

    fn from_str(spec: &str) -> Result<Self, ValidationError> {
        let number = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| bad(spec, format!("{s:?} is not an index (0 to {})", u32::MAX)))
        };
        let mut all = BTreeSet::new();
        for item in spec.split(',') {
            let (range, step) = match item.split_once(':') {
                Some((r, s)) => (r, number(s)?),
                None => (item, 1),
            };
            if step == 0 {
                return Err(bad(spec, "a step must be at least 1"));
            }
            let (first, last) = match range.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None if step == 1 => (number(range)?, number(range)?),
                None => return Err(bad(spec, "a step needs a range (for example 0-30:10)")),
            };
            if last < first {
                return Err(bad(spec, format!("{first}-{last} runs backwards")));
            }
            // Count first, so a huge range is refused without building it.
            let too_many = || {
                bad(
                    spec,
                    format!("more than {MAX_ARRAY_TASKS} tasks in one array"),
                )
            };
            let count = (u64::from(last - first) / u64::from(step) + 1) as usize;
            if count > MAX_ARRAY_TASKS {
                return Err(too_many());
            }
            all.extend((first..=last).step_by(step as usize));
            if all.len() > MAX_ARRAY_TASKS {
                return Err(too_many());
            }
        }
        Ok(ArrayIndices(all))
    }
}

impl fmt::Display for ArrayIndices {
    /// Runs of consecutive indices as ranges: `1-3,7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut iter = self.iter().peekable();
        let mut first_item = true;
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            if !first_item {
                f.write_str(",")?;
            }
            first_item = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

/// An array as submitted: its indices and, after a `%`, how many of its
/// members may be assigned or running at once (Slurm's `--array=0-999%50`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArraySpec {
    /// The indices.
    pub indices: ArrayIndices,
    /// The throttle, if any.
    pub limit: Option<u32>,
}

impl std::str::FromStr for ArraySpec {
    type Err = ValidationError;

    fn from_str(spec: &str) -> Result<Self, ValidationError> {
        let (indices, limit) = match spec.rsplit_once('%') {
            None => (spec, None),
            Some((indices, limit)) => match limit.trim().parse::<u32>() {
                Ok(n) if n > 0 => (indices, Some(n)),
                _ => {
                    return Err(bad(
                        spec,
                        format!("{limit:?} after % is not a limit (1 or more tasks at once)"),
                    ))
                }
            },
        };
        Ok(ArraySpec {
            indices: indices.parse()?,
            limit,
        })
    }
}

impl fmt::Display for ArraySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.indices)?;
        match self.limit {
            Some(n) => write!(f, "%{n}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Vec<u32>, ValidationError> {
        s.parse::<ArrayIndices>().map(|a| a.iter().collect())
    }

    #[test]
    fn ranges_steps_and_lists_parse_as_slurm_writes_them() {
        assert_eq!(parse("1-5").unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(parse("0-30:10").unwrap(), vec![0, 10, 20, 30]);
        assert_eq!(parse("0-9:4").unwrap(), vec![0, 4, 8]);
        assert_eq!(parse("7").unwrap(), vec![7]);
        assert_eq!(parse("1,3,5-7,3").unwrap(), vec![1, 3, 5, 6, 7]);
        assert_eq!(parse("1-10000").unwrap().len(), 10_000);
        assert_eq!(
            parse("1-60000,1-60000").unwrap().len(),
            60_000,
            "overlaps count once"
        );
    }

    #[test]
    fn bad_arrays_are_refused_with_the_reason() {
        for (spec, says) in [
            ("", "is not an index"),
            ("5-1", "runs backwards"),
            ("1-10:0", "at least 1"),
            ("4:2", "needs a range"),
            ("a-b", "is not an index"),
            ("-3", "is not an index"),
            ("0-4294967295", "more than"),
            ("0-99999,100000-100001", "more than"),
        ] {
            let e = parse(spec).expect_err(spec).to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn a_throttle_follows_a_percent_sign() {
        let a: ArraySpec = "1-10000%50".parse().unwrap();
        assert_eq!((a.indices.len(), a.limit), (10_000, Some(50)));
        assert_eq!(a.to_string(), "1-10000%50");
        assert_eq!("1-3".parse::<ArraySpec>().unwrap().limit, None);
        for bad in ["1-3%0", "1-3%", "1-3%x", "%5"] {
            assert!(bad.parse::<ArraySpec>().is_err(), "{bad}");
        }
    }

    proptest! {
        /// The canonical form parses back to the same indices.
        #[test]
        fn display_parses_back(indices in proptest::collection::btree_set(0u32..500, 1..60)) {
            let a = ArrayIndices(indices);
            prop_assert_eq!(a.to_string().parse::<ArrayIndices>().unwrap(), a);
        }
    }
}

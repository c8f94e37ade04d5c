//! Which endpoints an event goes to: `types` globs on event_type.

use globset::{Glob, GlobSet, GlobSetBuilder};

/// A compiled set of `types` globs. `*` matches any run of characters (dots included).
#[derive(Debug, Clone)]
pub struct TypeFilter(GlobSet);

impl TypeFilter {
    /// Compiles the globs; config validation has already checked each one.
    pub fn new<S: AsRef<str>>(globs: &[S]) -> Result<Self, globset::Error> {
        let mut b = GlobSetBuilder::new();
        for g in globs {
            b.add(Glob::new(g.as_ref())?);
        }
        Ok(Self(b.build()?))
    }

    pub fn matches(&self, event_type: &str) -> bool {
        self.0.is_match(event_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_on_event_types() {
        let f = TypeFilter::new(&["PROJECT.*", "INVOICE.CREATED"]).unwrap();
        assert!(f.matches("PROJECT.UPDATED"));
        assert!(f.matches("PROJECT.MEMBER.ADDED"));
        assert!(f.matches("INVOICE.CREATED"));
        assert!(!f.matches("INVOICE.PAID"));
        assert!(!f.matches("PROJECTS"));
        assert!(TypeFilter::new(&["*"]).unwrap().matches("anything at all"));
    }
}

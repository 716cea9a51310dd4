//! The model's parameters by name, split into trainable and frozen.
//!
//! ShotStream's teacher trains only the self-attention weights, so freezing has to be exact: a
//! frozen [`Var`] is never handed to the optimiser or the EMA, and so stays bit-identical.

use candle_core::Var;
use candle_nn::VarMap;

use crate::{Result, TrainError};

/// One named parameter and whether the optimiser may change it.
#[derive(Clone, Debug)]
pub struct Param {
    /// The tensor's name in the model (the [`VarMap`] key).
    pub name: String,
    /// The variable itself; it shares storage with the model.
    pub var: Var,
    /// False once a freeze pattern matched it.
    pub trainable: bool,
}

/// The model's parameters, sorted by name so every run (and every resume) sees the same order.
#[derive(Clone, Debug)]
pub struct NamedParams {
    params: Vec<Param>,
}

impl NamedParams {
    /// All of `varmap`'s variables, sorted by name, all trainable.
    pub fn from_varmap(varmap: &VarMap) -> Self {
        let data = varmap.data().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut params: Vec<Param> =
            data.iter().map(|(name, var)| Param { name: name.clone(), var: var.clone(), trainable: true }).collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Self { params }
    }

    /// Freezes every parameter matched by any pattern (see [`pattern_matches`]) and returns how
    /// many are frozen; a pattern that matches nothing is an error, since it is almost always a typo.
    pub fn freeze(&mut self, patterns: &[String]) -> Result<usize> {
        for pattern in patterns {
            if pattern.is_empty() {
                return Err(TrainError::out_of_range("freeze pattern", "\"\"", "a non-empty glob or substring"));
            }
            let mut matched = false;
            for param in &mut self.params {
                if pattern_matches(pattern, &param.name) {
                    param.trainable = false;
                    matched = true;
                }
            }
            if !matched {
                return Err(TrainError::out_of_range(
                    "freeze pattern",
                    format!("{pattern:?}"),
                    format!("a pattern matching at least one of the {} parameter names", self.params.len()),
                ));
            }
        }
        Ok(self.params.iter().filter(|p| !p.trainable).count())
    }

    /// Every parameter, sorted by name.
    pub fn all(&self) -> &[Param] {
        &self.params
    }

    /// The parameters the optimiser updates, sorted by name.
    pub fn trainable(&self) -> Vec<&Param> {
        self.params.iter().filter(|p| p.trainable).collect()
    }

    /// The parameters left untouched, sorted by name.
    pub fn frozen(&self) -> Vec<&Param> {
        self.params.iter().filter(|p| !p.trainable).collect()
    }

    /// The parameter called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.binary_search_by(|p| p.name.as_str().cmp(name)).ok().map(|i| &self.params[i])
    }

    /// How many scalars the trainable parameters hold.
    pub fn trainable_elements(&self) -> usize {
        self.params.iter().filter(|p| p.trainable).map(|p| p.var.elem_count()).sum()
    }
}

/// Whether `pattern` selects `name`: with a `*` it is a glob over the whole name, where `*` matches
/// any run of characters (dots included, so `blocks.*.self_attn.*` spans every block); without one
/// it is a plain substring.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return name.contains(pattern);
    }
    let pieces: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = (pieces[0], &pieces[1..]);
    let Some(mut tail) = name.strip_prefix(first) else { return false };
    let Some((last, middle)) = rest.split_last() else { return tail.is_empty() };
    // Leftmost matching of the middle pieces is optimal for `*`-only globs.
    for piece in middle {
        match tail.find(piece) {
            Some(at) => tail = &tail[at + piece.len()..],
            None => return false,
        }
    }
    tail.len() >= last.len() && tail.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn globs_and_substrings() {
        assert!(pattern_matches("blocks.*.self_attn.*", "blocks.3.self_attn.q.weight"));
        assert!(!pattern_matches("blocks.*.self_attn.*", "blocks.3.cross_attn.q.weight"));
        assert!(pattern_matches("self_attn", "blocks.3.self_attn.q.weight"));
        assert!(pattern_matches("*.weight", "a.weight"));
        assert!(!pattern_matches("*.weight", "a.bias"));
        assert!(pattern_matches("a*a", "aa"));
        assert!(!pattern_matches("a*a", "a"));
        assert!(pattern_matches("*", "anything"));
        assert!(!pattern_matches("head.*", "blocks.head.w"));
    }
}

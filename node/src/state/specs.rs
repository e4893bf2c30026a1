//! Decoded workflow specs shared between the workflows submitted with the same spec bytes.
//!
//! Most workflows are runs of a few definitions (the nightly job, the onboarding flow, a bench),
//! and the decoded spec is the largest part of a retained workflow: about 450 bytes for one noop
//! step, more with commands, arguments and labels. Decoding is a pure function of the bytes, so
//! workflows whose spec bytes are equal can hold one `Arc` of it. The state is the same value
//! either way: equality, the encoding and the state hash do not see the sharing, so `apply` stays
//! deterministic, and a replica that shares less (it restarted, or its memo started over) is equal
//! to one that shares more.
//!
//! The memo ([`SpecMemo`]) belongs to the state it serves (a field of `ClusterState` outside its
//! value: not compared, encoded or hashed; clones of the state share it). Both ways a spec enters
//! the state go through it: a Submit being applied, and a snapshot being decoded (so a restarted
//! node shares what its peers share, and decodes each distinct spec once instead of once per
//! workflow; serde reaches the decoding state's memo through [`decoding_with`]).
//!
//! The memo is bounded, and holds its specs weakly: a spec whose workflows are
//! all gone (or that no workflow took: `apply` refused its steps) is freed, and the next equal
//! spec is decoded again. When the memo is full it starts over: specs already shared stay shared,
//! and a workload of more distinct specs than the bound only shares less. Specs differing only in
//! their `input` are distinct here; sharing their steps would need a spec split in two.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use baton_proto::v1 as pb;
use prost::Message;

/// Larger specs are decoded per workflow: they are rarely repeated and would crowd the memo out.
const SHARED_SPEC_BYTES_MAX: usize = 16 * 1024;
/// Distinct specs the memo holds before it starts over.
const SHARED_SPECS_MAX: usize = 1024;
/// The memo's encoded bytes (its keys) before it starts over. The decoded specs are held weakly,
/// so they cost nothing the workflows holding them would not cost alone.
const SHARED_SPECS_BYTES_MAX: usize = 4 * 1024 * 1024;

const _: () = assert!(SHARED_SPEC_BYTES_MAX <= SHARED_SPECS_BYTES_MAX);
const _: () = assert!(SHARED_SPEC_BYTES_MAX <= baton_proto::limits::SPEC_BYTES_MAX);

#[derive(Default)]
struct Memo {
    // Looked up, never iterated: its order cannot reach the state.
    specs: HashMap<Box<[u8]>, Weak<pb::WorkflowSpec>>,
    bytes: usize,
}

/// Decodes a spec without the spare capacity decoding leaves: repeated fields grow as they are
/// read, and a one-step spec's steps would otherwise hold room for four (1,120 bytes).
fn decode_compact(bytes: &[u8]) -> Result<Arc<pb::WorkflowSpec>, prost::DecodeError> {
    let mut spec = pb::WorkflowSpec::decode(bytes)?;
    spec.steps.shrink_to_fit();
    for step in &mut spec.steps {
        step.depends_on.shrink_to_fit();
    }
    Ok(Arc::new(spec))
}

impl Memo {
    fn decode(&mut self, bytes: &[u8]) -> Result<Arc<pb::WorkflowSpec>, prost::DecodeError> {
        if bytes.len() > SHARED_SPEC_BYTES_MAX {
            return decode_compact(bytes);
        }
        if let Some(spec) = self.specs.get(bytes).and_then(Weak::upgrade) {
            return Ok(spec);
        }
        let spec = decode_compact(bytes)?;
        match self.specs.get_mut(bytes) {
            // Its last holder is gone; the key is already counted.
            Some(weak) => *weak = Arc::downgrade(&spec),
            None => {
                if self.specs.len() == SHARED_SPECS_MAX
                    || self.bytes + bytes.len() > SHARED_SPECS_BYTES_MAX
                {
                    *self = Self::default();
                }
                self.bytes += bytes.len();
                self.specs.insert(bytes.into(), Arc::downgrade(&spec));
            }
        }
        Ok(spec)
    }
}

/// One state's memo of decoded specs. Part of no state's value: every memo is equal to every
/// other, so equality, the encoding and the hash never see it.
#[derive(Clone, Default)]
pub struct SpecMemo(Arc<Mutex<Memo>>);

impl SpecMemo {
    /// Decodes a spec, sharing the result with every live earlier spec of the same bytes.
    pub fn decode(&self, bytes: &[u8]) -> Result<Arc<pb::WorkflowSpec>, prost::DecodeError> {
        if bytes.len() > SHARED_SPEC_BYTES_MAX {
            // Not kept: decoded outside the lock.
            return decode_compact(bytes);
        }
        // The memo holds no invariant a panic could break halfway: a poisoned lock is still good.
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .decode(bytes)
    }
}

impl PartialEq for SpecMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for SpecMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpecMemo")
    }
}

thread_local! {
    /// The memo of the state being decoded on this thread, for serde's spec visitor.
    static DECODING: RefCell<Option<SpecMemo>> = const { RefCell::new(None) };
}

/// Runs `decode` with `memo` as the memo specs decoded on this thread go through.
pub(super) fn decoding_with<T>(memo: &SpecMemo, decode: impl FnOnce() -> T) -> T {
    struct Restore(Option<SpecMemo>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DECODING.with(|d| *d.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(DECODING.with(|d| d.borrow_mut().replace(memo.clone())));
    decode()
}

/// Decodes a spec met while deserializing: through the memo of the state being decoded
/// ([`decoding_with`]), or on its own outside one.
pub(super) fn decode_in_snapshot(
    bytes: &[u8],
) -> Result<Arc<pb::WorkflowSpec>, prost::DecodeError> {
    match DECODING.with(|d| d.borrow().clone()) {
        Some(memo) => memo.decode(bytes),
        None => decode_compact(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, input: &str) -> Vec<u8> {
        pb::WorkflowSpec {
            name: name.into(),
            steps: vec![pb::StepSpec {
                name: "s".into(),
                task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
                ..Default::default()
            }],
            input: [("k".to_string(), input.to_string())].into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn equal_bytes_share_one_spec_and_different_bytes_do_not() {
        let mut memo = Memo::default();
        let a = memo.decode(&spec("shared", "1")).unwrap();
        let again = memo.decode(&spec("shared", "1")).unwrap();
        let other = memo.decode(&spec("shared", "2")).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(a.input["k"], "1");
        assert_eq!(a.steps.capacity(), 1, "no spare room kept");
        assert_eq!(other.input["k"], "2");
    }

    #[test]
    fn a_full_memo_starts_over_and_still_decodes_right() {
        let mut memo = Memo::default();
        for i in 0..SHARED_SPECS_MAX + 10 {
            let decoded = memo.decode(&spec("many", &i.to_string())).unwrap();
            assert_eq!(decoded.input["k"], i.to_string());
            assert!(memo.specs.len() <= SHARED_SPECS_MAX);
        }
        assert_eq!(memo.specs.len(), 10, "started over once, at the bound");
        let last = spec("many", &(SHARED_SPECS_MAX + 9).to_string());
        assert!(Arc::ptr_eq(
            &memo.decode(&last).unwrap(),
            &memo.decode(&last).unwrap()
        ));
        // The bytes bound: a few specs near the size limit fill it before the count does.
        let mut memo = Memo::default();
        for i in 0..SHARED_SPECS_BYTES_MAX / SHARED_SPEC_BYTES_MAX + 2 {
            let pad = "p".repeat(SHARED_SPEC_BYTES_MAX - 100);
            memo.decode(&spec(&format!("big{i}"), &pad)).unwrap();
            assert!(memo.bytes <= SHARED_SPECS_BYTES_MAX);
        }
    }

    #[test]
    fn large_and_malformed_specs_are_not_kept() {
        let mut big = pb::WorkflowSpec::decode(spec("big", "x").as_slice()).unwrap();
        big.input
            .insert("pad".into(), "p".repeat(SHARED_SPEC_BYTES_MAX));
        let bytes = big.encode_to_vec();
        let mut memo = Memo::default();
        let a = memo.decode(&bytes).unwrap();
        let b = memo.decode(&bytes).unwrap();
        assert!(!Arc::ptr_eq(&a, &b), "a large spec is decoded per workflow");
        assert_eq!(*a, big);
        assert!(memo.decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(memo.decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(memo.specs.is_empty());
    }

    #[test]
    fn a_spec_no_workflow_holds_any_more_is_freed_and_decoded_again() {
        let mut memo = Memo::default();
        let bytes = spec("gone", "1");
        let first = memo.decode(&bytes).unwrap();
        let weak = Arc::downgrade(&first);
        drop(first);
        assert!(weak.upgrade().is_none(), "the memo does not keep it alive");
        let again = memo.decode(&bytes).unwrap();
        assert_eq!(again.input["k"], "1");
        assert_eq!(memo.specs.len(), 1, "the key was reused, not added twice");
        assert_eq!(memo.bytes, bytes.len());
        assert!(Arc::ptr_eq(&again, &memo.decode(&bytes).unwrap()));
    }
}

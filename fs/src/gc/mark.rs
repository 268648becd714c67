//! Marking: every object a committed tree reaches, fed into a [`LiveSetBuilder`]
//! (the traversal is `walk::visit_new`, which reads each shared node once across
//! every root: a retained point shares all but a few nodes with the heads).

use std::collections::HashSet;

use super::LiveSetBuilder;
use crate::block::Hash;
use crate::store::{ObjectStore, StoreError};
use crate::walk;

/// Marks from roots, remembering the nodes it has read.
pub struct Marker<'a> {
    store: &'a dyn ObjectStore,
    seen: HashSet<Hash>,
    live: LiveSetBuilder,
}

impl<'a> Marker<'a> {
    pub fn new(store: &'a dyn ObjectStore, live: LiveSetBuilder) -> Marker<'a> {
        Marker { store, seen: HashSet::new(), live }
    }

    /// Marks what `root` reaches; `what` names the root in the error. A node that
    /// cannot be read stops marking: freeing from a damaged tree could free blocks it
    /// still uses.
    pub fn mark(&mut self, what: &str, root: &Hash) -> Result<(), StoreError> {
        let live = &mut self.live;
        walk::visit_new(self.store, root, &mut self.seen, &mut |h, kind| match kind {
            walk::ObjectKind::SeenMap | walk::ObjectKind::SeenMapLeaf => Ok(()),
            _ => live.insert(h),
        })
        .map_err(|e| match e {
            walk::VisitError::Node(e) => {
                StoreError::Index(format!("{what} has a damaged tree node ({e}); run `pgbranch verify` before gc"))
            }
            walk::VisitError::Visitor(e) => e,
        })
    }

    /// Marks one object that no tree names yet (a block a large write stored).
    pub fn mark_object(&mut self, hash: Hash) -> Result<(), StoreError> {
        self.live.insert(hash)
    }

    pub fn finish(self) -> super::LiveSet {
        self.live.finish()
    }
}

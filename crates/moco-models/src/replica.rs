//! Data-parallel replicas as the models see them: while a [`ReplicaGroup`] is active on the
//! thread ([`with_replicas`]), every [`crate::BatchNorm`] computes its batch statistics over
//! the shards of all replicas (SyncBN), and the training objectives gather keys from every
//! replica ([`gather_rows`]). The group itself (threads, devices, the collective transport)
//! comes from the training crate.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;

use burn::prelude::*;

/// The replicas of one data-parallel step, seen from one of them.
pub trait ReplicaGroup: Send + Sync {
    /// This replica's index, `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of replicas.
    fn world_size(&self) -> usize;
    /// Element-wise sum of `x` over the replicas (every replica passes a tensor of the same
    /// shape and gets the same result). Differentiable: the gradient of each replica's input
    /// is the sum over replicas of the gradients of the output.
    fn sum(&self, x: Tensor<2>) -> Tensor<2>;
}

thread_local! {
    static GROUP: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Runs `f` with `group` active on this thread, then restores the previous one (also when `f`
/// panics).
pub fn with_replicas<R>(group: Arc<dyn ReplicaGroup>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Box<dyn Any>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            GROUP.with(|g| *g.borrow_mut() = previous);
        }
    }
    let boxed: Box<dyn Any> = Box::new(group);
    let _restore = Restore(GROUP.with(|g| g.borrow_mut().replace(boxed)));
    f()
}

/// The group active on this thread, if any.
pub fn replicas() -> Option<Arc<dyn ReplicaGroup>> {
    GROUP.with(|g| {
        g.borrow()
            .as_ref()
            .and_then(|b| b.downcast_ref::<Arc<dyn ReplicaGroup>>())
            .cloned()
    })
}

/// Rows of every replica stacked in rank order, `[world · N, C]`: each replica writes its
/// `[N, C]` rows into its slot of a zero tensor and the group sums them (an all-gather built
/// on an all-reduce: it moves `world` times the data of a true all-gather). The result keeps
/// the gradient path of `x` when `x` has one.
pub fn gather_rows(group: &dyn ReplicaGroup, x: Tensor<2>) -> Tensor<2> {
    let [n, c] = x.dims();
    let (rank, world) = (group.rank(), group.world_size());
    if world == 1 {
        return x;
    }
    let slots = Tensor::<2>::zeros([world * n, c], &x.device());
    let placed = slots.slice_assign([rank * n..(rank + 1) * n, 0..c], x);
    group.sum(placed)
}

//! Data parallelism on CPU threads through a group of threads: the gather helper on its own, one step over 2 replicas against the single-device step on the whole batch (SyncBN
//! and gathered keys included), the world-size-1 path, and a short run end to end.

use std::path::PathBuf;
use std::sync::Arc;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use moco_models::{gather_rows, with_replicas, MocoConfig, Precision, ReplicaGroup, VitConfig};
use moco_train::distributed::{
    flat_parameters, shard, ProcessGroup, ProcessParallel, Replicas, ThreadGroup,
};
use moco_train::{
    apply_step, forward_backward, measure_gradients, pretrain, pretrain_data_parallel,
    DataParallel, Method, OptimConfig, PretrainConfig, RunOptions, Siamese, StepParams,
};

/// One collective group per backend and process: the tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn gather_places_each_replica_at_its_offset_and_sums_gradients_back() {
    let _turn = serial();
    let world = 3;
    let handles: Vec<_> = ThreadGroup::new(world)
        .into_iter()
        .enumerate()
        .map(|(rank, member)| {
            std::thread::spawn(move || {
                let device = Device::flex().autodiff();
                let member: Arc<dyn ProcessGroup> = Arc::new(member);
                let group: Arc<dyn ReplicaGroup> = Arc::new(Replicas::new(member));
                // Rows of rank r: r·10 + 0..6, shape [2, 3].
                let x = Tensor::<1, Int>::arange(0..6, &device)
                    .float()
                    .add_scalar(10.0 * rank as f64)
                    .reshape([2, 3])
                    .require_grad();
                let all = with_replicas(group.clone(), || gather_rows(group.as_ref(), x.clone()));
                let values = all.clone().into_data().try_to_vec::<f32>().unwrap();
                // Each replica weighs the gathered rows by (rank + 1): the gradient of its own
                // rows is the sum over replicas, 1 + 2 + 3 = 6.
                let loss = all.mul_scalar((rank + 1) as f64).sum();
                let grads = loss.backward();
                let gx = x
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                // Detached keys gather without a gradient path.
                let keys = with_replicas(group.clone(), || {
                    gather_rows(group.as_ref(), x.clone().detach())
                });
                let keys_tracked = keys.is_require_grad();
                (values, gx, keys_tracked)
            })
        })
        .collect();
    for h in handles {
        let (values, gx, keys_tracked) = h.join().unwrap();
        let expected: Vec<f32> = (0..world)
            .flat_map(|r| (0..6).map(move |i| (10 * r + i) as f32))
            .collect();
        assert_eq!(values, expected);
        assert_eq!(gx, vec![6.0; 6]);
        assert!(!keys_tracked);
    }
}

fn tiny_moco(device: &Device) -> Siamese {
    let vit = VitConfig::vit_tiny()
        .with_img_size(16)
        .with_patch_size(8)
        .with_in_chans(1)
        .with_embed_dim(32)
        .with_depth(1)
        .with_num_heads(2);
    device.seed(7);
    Method::MocoV3.siamese(&MocoConfig::vit(vit, 48, 16), device)
}

fn batch(n: usize, seed: u64) -> Vec<f32> {
    // A fixed pseudo-random batch (no generator shared with the model).
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n * 16 * 16)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn grads_vector(model: &Siamese, grads: &GradientsParams) -> Vec<f32> {
    struct Collect<'a>(&'a GradientsParams, Vec<f32>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                self.1.extend(g.into_data().iter::<f32>());
            }
        }
    }
    let mut c = Collect(grads, Vec::new());
    burn::module::Module::visit(model, &mut c);
    c.1
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// What the single-device step and the data-parallel step produce.
struct StepResult {
    loss: f64,
    grads: Vec<f32>,
    params: Vec<f32>,
    replica_params: Vec<Vec<f32>>,
}

fn step(world: usize, n: usize) -> StepResult {
    let device = Device::flex().autodiff();
    let model = tiny_moco(&device);
    // SGD: the update is linear in the gradient, so the parameters inherit the gradients'
    // agreement (AdamW's first step is sign-like and flips on near-zero gradients).
    let make_optim = || OptimConfig::sgd(0.9, 1e-4).init();
    let mut optim = make_optim();
    let params = StepParams {
        temperature: 0.2,
        momentum: 0.99,
    };
    let (v1, v2) = (batch(n, 1), batch(n, 2));
    let shape = [n, 1, 16, 16];
    let lr = 0.05;
    if world == 0 {
        // The single-device step on the whole batch.
        let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, shape), &device);
        let (model, loss, grads) =
            forward_backward(model, t(v1), t(v2), &params, 1.0, Precision::F32);
        let g = grads_vector(&model, &grads);
        let (_, global) = measure_gradients(&model, &grads);
        let model = apply_step(model, &mut optim, grads, global, lr, None);
        return StepResult {
            loss,
            grads: g,
            params: flat_parameters(&model),
            replica_params: vec![],
        };
    }
    let devices = vec![device; world];
    let dp = DataParallel::start(
        &model,
        &optim,
        make_optim,
        &devices,
        std::time::Duration::from_secs(60),
        Precision::F32,
    )
    .unwrap();
    let (model, local_loss, grads) = dp
        .micro_step(model, [v1, v2], shape, &params, 1.0, &devices[0])
        .unwrap();
    let (grads, loss) = dp
        .reduce(&model, grads, local_loss, lr, None, false, &devices[0])
        .unwrap();
    let g = grads_vector(&model, &grads);
    let (_, global) = measure_gradients(&model, &grads);
    let model = apply_step(model, &mut optim, grads, global, lr, None);
    let replica_params = dp.replica_parameters().unwrap();
    drop(dp);
    StepResult {
        loss,
        grads: g,
        params: flat_parameters(&model),
        replica_params,
    }
}

/// Two replicas on 4 + 4 images give the loss and gradients of one device on 8: keys from
/// both replicas, BN statistics over both shards (the heads have BN), gradients averaged.
#[test]
fn two_replicas_match_the_single_device_step() {
    let _turn = serial();
    let single = step(0, 8);
    let dp = step(2, 8);
    assert!(
        (single.loss - dp.loss).abs() < 1e-5,
        "{} vs {}",
        single.loss,
        dp.loss
    );
    let scale = single.grads.iter().fold(0f32, |m, g| m.max(g.abs()));
    let d = max_diff(&single.grads, &dp.grads);
    assert!(
        d < 1e-4 * scale.max(1.0),
        "gradients differ by {d} (max |g| {scale})"
    );
    // An SGD step moves every parameter by lr · g: the parameters agree to lr times the
    // gradients' agreement.
    let p = max_diff(&single.params, &dp.params);
    eprintln!(
        "loss {} vs {}; max |g| {scale}, gradient diff {d}, parameter diff {p}",
        single.loss, dp.loss
    );
    assert!(p <= 0.05 * d * 1.01 + 1e-6, "parameters differ by {p}");
    // The other replica took the same update.
    assert_eq!(dp.replica_params.len(), 1);
    assert_eq!(dp.replica_params[0], dp.params);
}

/// The data-parallel path with one replica is the single-device step.
#[test]
fn world_size_one_is_the_single_device_step() {
    let _turn = serial();
    let single = step(0, 6);
    let dp = step(1, 6);
    assert!((single.loss - dp.loss).abs() < 1e-6);
    assert!(max_diff(&single.grads, &dp.grads) < 1e-6);
    assert!(max_diff(&single.params, &dp.params) < 1e-7);
}

/// Processes simulated by threads: the sum of each call over `size` threads.
struct ThreadProcesses {
    rank: usize,
    size: usize,
    shared: Arc<(std::sync::Mutex<Vec<f32>>, std::sync::Barrier)>,
}

impl ProcessGroup for ThreadProcesses {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.rank
    }
    fn sum(&self, values: &mut [f32]) -> Result<(), moco_train::TrainError> {
        let (buffer, barrier) = &*self.shared;
        if self.rank == 0 {
            *buffer.lock().unwrap() = vec![0.0; values.len()];
        }
        barrier.wait();
        for (b, v) in buffer.lock().unwrap().iter_mut().zip(values.iter()) {
            *b += v;
        }
        barrier.wait();
        values.copy_from_slice(&buffer.lock().unwrap());
        barrier.wait();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        panic!("abort {code}")
    }
}

/// A run over processes (here threads standing in for them) computes the single-device step:
/// each process on its shard, keys and BN statistics summed through the group, the gradients
/// summed as one vector, the mean loss, and the stop wish of any process.
#[test]
fn processes_match_the_single_device_step() {
    let _turn = serial();
    let single = step(0, 8);
    let world = 2;
    let shared = Arc::new((
        std::sync::Mutex::new(Vec::new()),
        std::sync::Barrier::new(world),
    ));
    // The same initial weights in every process.
    let model = tiny_moco(&Device::flex().autodiff());
    // Initialised here (parameters are initialised lazily, from the seeded generator).
    let _ = flat_parameters(&model);
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let shared = shared.clone();
            let model = model.clone();
            std::thread::spawn(move || {
                let device = Device::flex().autodiff();
                // Its own autodiff graph (a process has its own).
                let model = model.fork(&device);
                let group: Arc<dyn ProcessGroup> = Arc::new(ThreadProcesses {
                    rank,
                    size: world,
                    shared,
                });
                let replica = ProcessParallel::start(
                    group,
                    std::time::Duration::from_secs(60),
                    Precision::F32,
                );
                let params = StepParams {
                    temperature: 0.2,
                    momentum: 0.99,
                };
                let shape = [8, 1, 16, 16];
                let mine = |seed| shard(batch(8, seed), shape, world).swap_remove(rank);
                let ((x1, s), (x2, _)) = (mine(1), mine(2));
                let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, s), &device);
                let (model, loss, grads) = replica.micro_step(model, [t(x1), t(x2)], &params, 1.0);
                let (grads, loss, stop) = replica
                    .reduce(&model, grads, loss, rank == 1, &device)
                    .unwrap();
                (loss, grads_vector(&model, &grads), stop)
            })
        })
        .collect();
    let scale = single.grads.iter().fold(0f32, |m, g| m.max(g.abs()));
    for h in handles {
        let (loss, grads, stop) = h.join().unwrap();
        assert!(
            (single.loss - loss).abs() < 1e-5,
            "{} vs {loss}",
            single.loss
        );
        let d = max_diff(&single.grads, &grads);
        assert!(d < 1e-4 * scale.max(1.0), "gradients differ by {d}");
        assert!(stop, "process 1 asked to stop: every process stops");
    }
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("moco-ddp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A short run over 2 replicas logs the losses of the single-device run (same data, same
/// augmentations, global BN and negatives).
#[test]
fn a_data_parallel_run_follows_the_single_device_run() {
    let _turn = serial();
    let config = PretrainConfig::preset("fmnist-vit")
        .unwrap()
        .with_embed_dim(Some(32))
        .with_depth(Some(1))
        .with_num_heads(Some(2))
        .with_mlp_dim(64)
        .with_out_dim(32)
        .with_batch_size(16)
        .with_max_steps(Some(4))
        .with_knn_every(2)
        .with_knn_memory(256)
        .with_knn_eval(128)
        .with_knn_k(10)
        .with_workers(1)
        .with_log_every(1000);
    let quiet = RunOptions {
        quiet: true,
        ..Default::default()
    };
    let device = Device::flex();
    let (a, b) = (Tmp::new("single"), Tmp::new("two"));
    let single = pretrain(config.clone(), &a.0, &quiet, &device).unwrap();
    let two = pretrain_data_parallel(
        config.clone(),
        &b.0,
        &quiet,
        &[device.clone(), device.clone()],
    )
    .unwrap();
    assert_eq!(two.steps, 4);
    for (x, y) in single.losses.iter().zip(&two.losses) {
        assert!(
            (x - y).abs() < 1e-4,
            "{:?} vs {:?}",
            single.losses,
            two.losses
        );
    }
    let (s, t) = (single.final_knn.unwrap(), two.final_knn.unwrap());
    assert!((s.top1 - t.top1).abs() <= 1.0, "{} vs {}", s.top1, t.top1);
    // SimCLR: the negatives of every replica are gathered, so its losses follow too.
    let simclr = config.clone().with_method(Method::SimClr);
    let (c, d) = (Tmp::new("simclr-single"), Tmp::new("simclr-two"));
    let single = pretrain(simclr.clone(), &c.0, &quiet, &device).unwrap();
    let two =
        pretrain_data_parallel(simclr, &d.0, &quiet, &[device.clone(), device.clone()]).unwrap();
    for (x, y) in single.losses.iter().zip(&two.losses) {
        let close = (x - y).abs() < 1e-4;
        assert!(close, "SimCLR: {:?} vs {:?}", single.losses, two.losses);
    }
    // An odd split is refused with the reason.
    let four = vec![device; 4];
    let e = pretrain_data_parallel(config.with_batch_size(18), &b.0, &quiet, &four)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be split evenly over 4 devices"), "{e}");
}

/// Processes that would start from different steps (one resumed from another checkpoint) or
/// with other weights refuse to train; the same start passes.
#[test]
fn processes_refuse_to_start_from_different_places() {
    let _turn = serial();
    let model = tiny_moco(&Device::flex().autodiff());
    let _ = flat_parameters(&model);
    let check = |positions: [[u64; 3]; 2], perturb: bool| -> Vec<bool> {
        let shared = Arc::new((
            std::sync::Mutex::new(Vec::new()),
            std::sync::Barrier::new(2),
        ));
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let (shared, model) = (shared.clone(), model.clone());
                std::thread::spawn(move || {
                    let device = Device::flex().autodiff();
                    let mut model = model.fork(&device);
                    if perturb && rank == 1 {
                        model = model.map(&mut AddOne);
                    }
                    let group: Arc<dyn ProcessGroup> = Arc::new(ThreadProcesses {
                        rank,
                        size: 2,
                        shared,
                    });
                    let replica = ProcessParallel::start(
                        group,
                        std::time::Duration::from_secs(60),
                        Precision::F32,
                    );
                    replica.check_same_start(&model, positions[rank]).is_ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    assert_eq!(check([[4, 0, 4], [4, 0, 4]], false), vec![true, true]);
    assert_eq!(check([[2, 0, 2], [4, 0, 4]], false), vec![false, false]);
    assert_eq!(check([[4, 0, 4], [4, 0, 4]], true), vec![false, false]);
}

/// Adds 1 to every float parameter.
struct AddOne;

impl burn::module::ModuleMapper for AddOne {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.map(|t| t.add_scalar(1.0))
    }
}

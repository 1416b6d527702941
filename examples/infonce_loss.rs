//! MoCo v3's contrastive loss alone, in your own training code: symmetric InfoNCE with the
//! other samples of the batch as negatives, on any Burn backend, with its gradient.
//!
//! `cargo run --release --example infonce_loss`

use burn::prelude::*;
use burn::tensor::Distribution;
use moco::loss::infonce;

fn main() {
    let device = Device::flex().autodiff();
    device.seed(0);
    let (batch, dim, temperature) = (8, 16, 0.2);
    // Two views of the same `batch` images give similar vectors: here one random vector per
    // image plus noise. The queries (the predictor's outputs in MoCo v3) take a gradient; the
    // keys (the momentum encoder's outputs) do not.
    let images = Tensor::<2>::random([batch, dim], Distribution::Normal(0.0, 1.0), &device);
    let view =
        || images.clone() + Tensor::random([batch, dim], Distribution::Normal(0.0, 0.5), &device);
    let (q1, q2) = (view().require_grad(), view().require_grad());
    let (k1, k2) = (view().detach(), view().detach());

    // ctr(q1, k2) + ctr(q2, k1): each query's positive is the key of the other view of its
    // image, the other keys are its negatives. `rank` is 0 on one device (under data parallelism the keys of
    // every replica are gathered and the positives sit at this replica's offset).
    let aligned = infonce(q1.clone(), k2.clone(), temperature, 0)
        + infonce(q2.clone(), k1.clone(), temperature, 0);
    // With the keys in another order, every positive is a stranger.
    let shuffled = infonce(q1.clone(), k2.clone().flip([0]), temperature, 0)
        + infonce(q2.clone(), k1.flip([0]), temperature, 0);
    let value = |t: &Tensor<1>| t.clone().into_scalar::<f32>();
    println!("loss with matching keys  {:.4}", value(&aligned));
    println!("loss with shuffled keys  {:.4}", value(&shuffled));
    println!(
        "unrelated queries and keys give about 2·2T·ln({batch}) = {:.4}",
        4.0 * temperature * (batch as f64).ln()
    );

    let grads = aligned.backward();
    let g = q1.grad(&grads).expect("q1 takes a gradient");
    println!(
        "gradient of the loss with respect to q1: {:?}, norm {:.4}",
        g.dims(),
        g.square().sum().sqrt().into_scalar::<f32>()
    );
}

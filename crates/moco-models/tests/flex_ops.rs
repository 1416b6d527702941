//! The flex backend's fused operations (attention, LayerNorm, GELU, linear, product, im2col,
//! BatchNorm + ReLU) agree with Burn's composition of the same operations, forward and
//! backward, over grids of shapes; a ViT gives the same features and gradients with either
//! set of kernels.

use burn::module::Module;
use burn::nn::LayerNormConfig;
use burn::tensor::activation::softmax;
use burn::tensor::Device;
use burn::tensor::{Distribution, FloatDType, Tensor};
use moco_models::flex::{attention, batch_norm_rows, gelu, layer_norm, AttentionShape};
use moco_models::{AttentionKernel, LayerNormKernel, VitConfig};

/// Largest |a − b| relative to the largest |a| (at least 1).
fn rel_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let scale = a.clone().abs().max().into_scalar::<f32>().max(1.0);
    (a - b).abs().max().into_scalar::<f32>() / scale
}

/// `softmax(s·q·kᵀ)·v` per head with Burn's operations, `[batch·tokens, D]`.
fn composed(qkv: Tensor<2>, s: AttentionShape) -> Tensor<2> {
    let (b, n, d, h) = (s.batch, s.tokens, s.dim, s.heads);
    let heads = |i: usize| {
        qkv.clone()
            .slice([0..b * n, i * d..(i + 1) * d])
            .reshape([b, n, h, d / h])
            .swap_dims(1, 2)
    };
    let scores = heads(0)
        .matmul(heads(1).swap_dims(2, 3))
        .mul_scalar(s.scale);
    softmax(scores, 3)
        .matmul(heads(2))
        .swap_dims(1, 2)
        .reshape([b * n, d])
}

#[test]
fn fused_attention_matches_the_composition_and_its_gradient() {
    let device = Device::flex().autodiff();
    // (batch, tokens, heads, head width): single elements, odd sizes, ViT-Tiny/4 at 32 px.
    let grid = [
        (1, 1, 1, 1),
        (2, 5, 1, 3),
        (3, 17, 3, 8),
        (4, 7, 4, 5),
        (1, 50, 12, 4),
        (2, 65, 3, 64),
    ];
    for (case, &(batch, tokens, heads, hd)) in grid.iter().enumerate() {
        let dim = heads * hd;
        let shape = AttentionShape {
            batch,
            tokens,
            heads,
            dim,
            scale: (hd as f32).powf(-0.5),
        };
        let rows = batch * tokens;
        let x = Tensor::<2>::random([rows, 3 * dim], Distribution::Normal(0.0, 1.5), &device);
        let upstream = Tensor::<2>::random([rows, dim], Distribution::Normal(0.0, 1.0), &device);

        let x_ref = Tensor::<2>::from_inner(x.clone()).require_grad();
        let y_ref = composed(x_ref.clone(), shape);
        let g_ref = (y_ref.clone() * Tensor::from_inner(upstream.clone()))
            .sum()
            .backward();
        let x_fused = Tensor::<2>::from_inner(x.clone()).require_grad();
        let y_fused = attention(x_fused.clone(), shape).expect("flex runs the fused attention");
        let g_fused = (y_fused.clone() * Tensor::from_inner(upstream))
            .sum()
            .backward();

        let out = rel_diff(y_ref.inner(), y_fused.clone().inner());
        assert!(out < 2e-6, "case {case}: output differs by {out}");
        let grad = rel_diff(x_ref.grad(&g_ref).unwrap(), x_fused.grad(&g_fused).unwrap());
        assert!(grad < 2e-5, "case {case}: gradient differs by {grad}");

        // Without autodiff: the same values.
        let y_plain = attention(x, shape).expect("flex runs the fused attention");
        let plain = rel_diff(y_fused.clone().inner(), y_plain);
        assert!(
            plain == 0.0,
            "case {case}: plain forward differs by {plain}"
        );
    }
}

#[test]
fn other_precisions_and_non_finite_values() {
    let device = Device::flex();
    let shape = AttentionShape {
        batch: 2,
        tokens: 3,
        heads: 2,
        dim: 4,
        scale: 0.5,
    };
    let x = Tensor::<2>::random([6, 12], Distribution::Normal(0.0, 1.0), &device);
    // bf16 is left to the composition.
    let half = x.clone().cast(FloatDType::BF16);
    assert!(attention(half, shape).is_err());
    // A NaN score makes its row NaN, as the composition does.
    let values: Vec<f32> = x.to_data().try_to_vec::<f32>().unwrap();
    let mut poisoned = values;
    poisoned[0] = f32::NAN; // the first query of the first sequence, head 0
    let x = Tensor::<2>::from_data(burn::tensor::TensorData::new(poisoned, [6, 12]), &device);
    let out: Vec<f32> = attention(x, shape)
        .unwrap()
        .to_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(out[0].is_nan() && out[1].is_nan(), "{out:?}");
    assert!(out[2..].iter().all(|v| v.is_finite()), "{out:?}");
}

#[test]
fn a_vit_is_the_same_function_with_either_set_of_kernels() {
    let device = Device::flex().autodiff();
    let config = |kernel: (AttentionKernel, LayerNormKernel)| {
        VitConfig::new()
            .with_img_size(16)
            .with_patch_size(4)
            .with_embed_dim(24)
            .with_depth(2)
            .with_num_heads(3)
            .with_freeze_patch_embed(false)
            .with_attention_kernel(Some(kernel.0))
            .with_layer_norm_kernel(Some(kernel.1))
    };
    let fused = config((AttentionKernel::Fused, LayerNormKernel::Fused)).init(&device);
    let images = Tensor::<4>::random([3, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    // A first forward draws the lazily initialised weights, which the copy then shares.
    let _ = fused.forward(images.clone());
    let composed = config((AttentionKernel::Composed, LayerNormKernel::Backend))
        .init(&device)
        .load_record(fused.clone().into_record());
    let (y_fused, y_composed) = (fused.forward(images.clone()), composed.forward(images));
    let out = rel_diff(y_fused.clone().inner(), y_composed.clone().inner());
    assert!(out < 1e-5, "features differ by {out}");
    let (g_fused, g_composed) = (y_fused.sum().backward(), y_composed.sum().backward());
    let qkv = |vit: &moco_models::Vit, g| vit.blocks[0].attn.qkv.weight.grad(g).unwrap();
    let grad = rel_diff(qkv(&fused, &g_fused), qkv(&composed, &g_composed));
    assert!(grad < 1e-4, "qkv weight gradients differ by {grad}");
    let patch = |vit: &moco_models::Vit, g| match &vit.patch_embed {
        moco_models::vit::PatchEmbed::Patchify(p) => p.proj.weight.grad(g).unwrap(),
        _ => unreachable!("a linear patch projection"),
    };
    let grad = rel_diff(patch(&fused, &g_fused), patch(&composed, &g_composed));
    assert!(grad < 1e-4, "patch projection gradients differ by {grad}");
    // The inference copy (no autodiff) runs the fused form on plain flex.
    let plain = fused.valid().forward(Tensor::random(
        [2, 3, 16, 16],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    assert_eq!(plain.dims(), [2, 24]);
}

#[test]
fn fused_layer_norm_matches_burns_and_its_gradients() {
    let device = Device::flex().autodiff();
    // (rows, width): one value per row, odd widths, more rows than one parallel block.
    for (case, &(rows, width)) in [(1, 1), (3, 7), (130, 192), (65, 33)].iter().enumerate() {
        let norm = LayerNormConfig::new(width).with_epsilon(1e-6).init(&device);
        let gamma = Tensor::<1>::random([width], Distribution::Normal(1.0, 0.5), &device);
        let beta = Tensor::<1>::random([width], Distribution::Normal(0.0, 0.5), &device);
        let mut norm = norm;
        norm.gamma = burn::module::Param::from_tensor(Tensor::from_inner(gamma));
        norm.beta = Some(burn::module::Param::from_tensor(Tensor::from_inner(beta)));
        let x = Tensor::<3>::random([rows, 2, width], Distribution::Normal(0.5, 2.0), &device);
        let upstream =
            Tensor::<3>::random([rows, 2, width], Distribution::Normal(0.0, 1.0), &device);

        let x_ref = Tensor::<3>::from_inner(x.clone()).require_grad();
        let y_ref = norm.forward(x_ref.clone());
        let g_ref = (y_ref.clone() * Tensor::from_inner(upstream.clone()))
            .sum()
            .backward();
        let x_fused = Tensor::<3>::from_inner(x.clone()).require_grad();
        let beta = norm.beta.as_ref().unwrap().val();
        let y_fused = layer_norm(x_fused.clone(), norm.gamma.val(), beta, 1e-6)
            .expect("flex runs the fused LayerNorm");
        let g_fused = (y_fused.clone() * Tensor::from_inner(upstream))
            .sum()
            .backward();

        let out = rel_diff(y_ref.inner(), y_fused.clone().inner());
        assert!(out < 2e-6, "case {case}: output differs by {out}");
        let dx = rel_diff(x_ref.grad(&g_ref).unwrap(), x_fused.grad(&g_fused).unwrap());
        assert!(dx < 2e-5, "case {case}: dx differs by {dx}");
        let dgamma = rel_diff(
            norm.gamma.grad(&g_ref).unwrap(),
            norm.gamma.grad(&g_fused).unwrap(),
        );
        assert!(dgamma < 2e-5, "case {case}: dγ differs by {dgamma}");
        let beta = norm.beta.as_ref().unwrap();
        let dbeta = rel_diff(beta.grad(&g_ref).unwrap(), beta.grad(&g_fused).unwrap());
        assert!(dbeta < 2e-5, "case {case}: dβ differs by {dbeta}");

        // Without autodiff: the same values.
        let plain = layer_norm(x, norm.gamma.val().inner(), beta.val().inner(), 1e-6).unwrap();
        assert_eq!(rel_diff(y_fused.inner(), plain), 0.0, "case {case}");
    }
}

#[test]
fn fused_gelu_matches_burns_on_strided_inputs() {
    let device = Device::flex().autodiff();
    for (case, dims) in [[1, 1, 1], [3, 5, 7], [2, 65, 129]].into_iter().enumerate() {
        let x = Tensor::<3>::random(dims, Distribution::Normal(0.0, 3.0), &device).swap_dims(1, 2); // a strided view
        let x_ref = Tensor::<3>::from_inner(x.clone()).require_grad();
        let x_fused = Tensor::<3>::from_inner(x).require_grad();
        let y_ref = burn::tensor::activation::gelu(x_ref.clone());
        let y_fused = gelu(x_fused.clone()).expect("flex runs the fused GELU");
        let out = rel_diff(y_ref.clone().inner(), y_fused.clone().inner());
        assert!(out < 2e-6, "case {case}: GELU differs by {out}");
        let r = Tensor::<3>::random(y_ref.dims(), Distribution::Normal(0.0, 1.0), &device);
        let g_ref = (y_ref * r.clone()).sum().backward();
        let g_fused = (y_fused * r).sum().backward();
        let dx = rel_diff(x_ref.grad(&g_ref).unwrap(), x_fused.grad(&g_fused).unwrap());
        assert!(dx < 2e-6, "case {case}: gradient differs by {dx}");
    }
}

#[test]
fn fused_linear_matches_burns_and_its_gradients() {
    let device = Device::flex().autodiff();
    // (rows, in, out): single elements, odd sizes, a ViT-sized product.
    for (case, &(rows, d_in, d_out)) in [(1, 1, 1), (3, 5, 7), (130, 33, 65), (257, 192, 576)]
        .iter()
        .enumerate()
    {
        let layer = burn::nn::LinearConfig::new(d_in, d_out).init(&device);
        let mut layer = layer;
        layer.bias = Some(burn::module::Param::from_tensor(Tensor::random(
            [d_out],
            Distribution::Normal(0.0, 1.0),
            &device,
        )));
        let x = Tensor::<2>::random([rows, d_in], Distribution::Normal(0.0, 1.0), &device);
        let upstream = Tensor::<2>::random([rows, d_out], Distribution::Normal(0.0, 1.0), &device);
        let x_ref = Tensor::<2>::from_inner(x.clone()).require_grad();
        let y_ref = layer.forward(x_ref.clone());
        let g_ref = (y_ref.clone() * Tensor::from_inner(upstream.clone()))
            .sum()
            .backward();
        let x_fused = Tensor::<2>::from_inner(x.clone()).require_grad();
        let bias = layer.bias.as_ref().unwrap();
        let y_fused = moco_models::flex::linear((x_fused.clone(), layer.weight.val(), bias.val()))
            .expect("flex runs the fused linear layer");
        let g_fused = (y_fused.clone() * Tensor::from_inner(upstream))
            .sum()
            .backward();

        let out = rel_diff(y_ref.inner(), y_fused.clone().inner());
        assert!(out < 2e-6, "case {case}: output differs by {out}");
        let dx = rel_diff(x_ref.grad(&g_ref).unwrap(), x_fused.grad(&g_fused).unwrap());
        assert!(dx < 2e-6, "case {case}: dx differs by {dx}");
        let dw = rel_diff(
            layer.weight.grad(&g_ref).unwrap(),
            layer.weight.grad(&g_fused).unwrap(),
        );
        assert!(dw < 2e-6, "case {case}: dW differs by {dw}");
        let db = rel_diff(bias.grad(&g_ref).unwrap(), bias.grad(&g_fused).unwrap());
        assert!(db < 2e-6, "case {case}: db differs by {db}");

        // Without autodiff: the same values.
        let plain =
            moco_models::flex::linear((x, layer.weight.val().inner(), bias.val().inner())).unwrap();
        assert_eq!(rel_diff(y_fused.inner(), plain), 0.0, "case {case}");
    }
}

#[test]
fn fused_product_matches_burns_and_its_gradients() {
    let device = Device::flex().autodiff();
    // (m, k, n): single elements, odd sizes, both sides of the parallel threshold, a ResNet
    // convolution's `weight · im2col` (64 filters of 3×3×64 over 32 maps of 8×8).
    let shapes = [(1, 1, 1), (3, 5, 7), (33, 130, 65), (64, 576, 2048)];
    for (case, &(m, k, n)) in shapes.iter().enumerate() {
        let normal =
            |dims: [usize; 2]| Tensor::<2>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let (a, b, upstream) = (normal([m, k]), normal([k, n]), normal([m, n]));
        // Every combination of operands that need a gradient (a frozen weight: `a` without).
        for (grad_a, grad_b) in [(true, true), (false, true), (true, false)] {
            let leaf = |t: &Tensor<2>, grad: bool| {
                let t = Tensor::<2>::from_inner(t.clone());
                if grad {
                    t.require_grad()
                } else {
                    t
                }
            };
            let (a_ref, b_ref) = (leaf(&a, grad_a), leaf(&b, grad_b));
            let y_ref = a_ref.clone().matmul(b_ref.clone());
            let g_ref = (y_ref.clone() * Tensor::from_inner(upstream.clone()))
                .sum()
                .backward();
            let (a_fused, b_fused) = (leaf(&a, grad_a), leaf(&b, grad_b));
            let y_fused = moco_models::flex::product((a_fused.clone(), b_fused.clone()))
                .expect("flex runs the fused product");
            let g_fused = (y_fused.clone() * Tensor::from_inner(upstream.clone()))
                .sum()
                .backward();
            let at = format!("case {case} ({m}×{k}·{k}×{n}), gradients {grad_a}/{grad_b}");
            let out = rel_diff(y_ref.inner(), y_fused.clone().inner());
            assert!(out < 2e-6, "{at}: output differs by {out}");
            assert_eq!(a_fused.grad(&g_fused).is_some(), grad_a, "{at}: da");
            assert_eq!(b_fused.grad(&g_fused).is_some(), grad_b, "{at}: db");
            if grad_a {
                let da = rel_diff(a_ref.grad(&g_ref).unwrap(), a_fused.grad(&g_fused).unwrap());
                assert!(da < 2e-6, "{at}: da differs by {da}");
            }
            if grad_b {
                let db = rel_diff(b_ref.grad(&g_ref).unwrap(), b_fused.grad(&g_fused).unwrap());
                assert!(db < 2e-6, "{at}: db differs by {db}");
            }
            // Without autodiff: the same values.
            let plain = moco_models::flex::product((a.clone(), b.clone())).unwrap();
            assert_eq!(rel_diff(y_fused.inner(), plain), 0.0, "{at}");
        }
    }
    // Other dtypes are handed back.
    let half = Tensor::<2>::ones([2, 2], &device).cast(FloatDType::F16);
    assert!(moco_models::flex::product((half.clone(), half)).is_err());
}

/// A convolution as `weight · im2col(x)` on the channel-major layout with the fused
/// operations is Burn's `conv2d`, values and gradients, over kernels, strides and paddings
/// (including padding wider than the kernel reaches and maps smaller than the kernel).
#[test]
fn im2col_and_product_make_burns_convolution() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use moco_models::flex::{im2col, product, Im2colWindow};
    let device = Device::flex().autodiff();
    // (channels, images, h, w, out, kernel, stride, padding [top, left, bottom, right])
    let cases = [
        (1, 1, 1, 1, 1, [1, 1], [1, 1], [0, 0, 0, 0]),
        (3, 2, 7, 5, 4, [3, 3], [1, 1], [1, 1, 1, 1]),
        (3, 2, 9, 9, 8, [7, 7], [2, 2], [3, 3, 3, 3]),
        (5, 3, 6, 7, 2, [1, 1], [2, 2], [0, 0, 0, 0]),
        (2, 2, 5, 6, 3, [3, 2], [2, 3], [2, 0, 1, 3]),
        (4, 1, 2, 2, 3, [3, 3], [1, 1], [1, 1, 1, 1]),
        (16, 4, 8, 8, 16, [3, 3], [2, 2], [1, 1, 1, 1]),
    ];
    for (case, &(c, n, h, w, o, kernel, stride, padding)) in cases.iter().enumerate() {
        let window = Im2colWindow {
            kernel,
            stride,
            padding,
        };
        let [ho, wo] = window.output(h, w).expect("a case that fits");
        let normal =
            |dims: [usize; 4]| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let (x, weight) = (normal([n, c, h, w]), normal([o, c, kernel[0], kernel[1]]));
        let upstream = normal([n, o, ho, wo]);
        // Burn's convolution (symmetric padding only: asymmetric cases pad the input first).
        let [top, left, bottom, right] = padding;
        let x_ref = Tensor::<4>::from_inner(x.clone()).require_grad();
        let w_ref = Tensor::<4>::from_inner(weight.clone()).require_grad();
        let padded = Tensor::<4>::zeros([n, c, h + top + bottom, w + left + right], &device)
            .slice_assign([0..n, 0..c, top..top + h, left..left + w], x_ref.clone());
        let options = ConvOptions::new(stride, [0, 0], [1, 1], 1);
        let y_ref = conv2d(padded, w_ref.clone(), None, options);
        let g_ref = (y_ref.clone() * Tensor::from_inner(upstream.clone()))
            .sum()
            .backward();

        let x_fused = Tensor::<4>::from_inner(x.clone()).require_grad();
        let w_fused = Tensor::<4>::from_inner(weight.clone()).require_grad();
        let cols = im2col(x_fused.clone().swap_dims(0, 1), window).expect("flex runs im2col");
        assert_eq!(
            cols.dims(),
            [c * kernel[0] * kernel[1], n * ho * wo],
            "case {case}"
        );
        let flat = w_fused.clone().reshape([o, c * kernel[0] * kernel[1]]);
        let y = product((flat, cols)).expect("flex runs the product");
        let y_fused = y.reshape([o, n, ho, wo]).swap_dims(0, 1);
        let g_fused = (y_fused.clone() * Tensor::from_inner(upstream))
            .sum()
            .backward();

        let out = rel_diff(y_ref.inner(), y_fused.inner());
        assert!(out < 2e-6, "case {case}: output differs by {out}");
        let dx = rel_diff(x_ref.grad(&g_ref).unwrap(), x_fused.grad(&g_fused).unwrap());
        assert!(dx < 2e-6, "case {case}: dx differs by {dx}");
        let dw = rel_diff(w_ref.grad(&g_ref).unwrap(), w_fused.grad(&g_fused).unwrap());
        assert!(dw < 2e-6, "case {case}: dW differs by {dw}");

        // Without autodiff: the same columns.
        let plain = im2col(x.clone().swap_dims(0, 1), window).unwrap();
        let tracked = im2col(Tensor::<4>::from_inner(x).swap_dims(0, 1), window).unwrap();
        assert_eq!(rel_diff(tracked.inner(), plain), 0.0, "case {case}");
    }
}

/// BatchNorm over rows with batch statistics (biased variance), then ReLU, with Burn's
/// operations: the reference for the fused form.
fn composed_batch_norm(
    x: Tensor<2>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    relu: bool,
) -> (Tensor<2>, Tensor<1>, Tensor<1>) {
    let [c, m] = x.dims();
    let mean = x.clone().sum_dim(1).div_scalar(m as f64);
    let centered = x.clone().sub(mean.clone());
    let var = centered.square().sum_dim(1).div_scalar(m as f64);
    let scale = gamma
        .reshape([c, 1])
        .mul(var.clone().add_scalar(1e-5).sqrt().recip());
    let shift = beta.reshape([c, 1]).sub(mean.clone().mul(scale.clone()));
    let y = x.mul(scale).add(shift);
    let y = if relu {
        burn::tensor::activation::relu(y)
    } else {
        y
    };
    (y, mean.reshape([c]), var.reshape([c]))
}

#[test]
fn fused_batch_norm_matches_burns_and_its_gradients() {
    let device = Device::flex().autodiff();
    // (channels, values per channel): one value, odd sizes, rows longer than a parallel block,
    // many short rows (a 32 px ResNet's last stage).
    let cases = [(1, 1), (3, 7), (5, 20_000), (300, 32), (64, 2048), (2, 1)];
    for (case, &(c, m)) in cases.iter().enumerate() {
        for relu in [false, true] {
            let x = Tensor::<2>::random([c, m], Distribution::Normal(0.5, 2.0), &device);
            let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &device);
            let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
            let upstream = Tensor::<2>::random([c, m], Distribution::Normal(0.0, 1.0), &device);
            let leaf = |t: Tensor<2>| Tensor::<2>::from_inner(t).require_grad();
            let leaf1 = |t: Tensor<1>| Tensor::<1>::from_inner(t).require_grad();
            let run = |fused: bool| {
                let (x, g, b) = (leaf(x.clone()), leaf1(gamma.clone()), leaf1(beta.clone()));
                let (y, mean, var) = if fused {
                    batch_norm_rows((x.clone(), g.clone(), b.clone()), 1e-5, relu)
                        .unwrap_or_else(|_| panic!("flex runs the fused BatchNorm"))
                } else {
                    composed_batch_norm(x.clone(), g.clone(), b.clone(), relu)
                };
                let grads = (y.clone() * Tensor::from_inner(upstream.clone()))
                    .sum()
                    .backward();
                let grad = |t: &Tensor<1>| t.grad(&grads).unwrap();
                let dx = x.grad(&grads).unwrap();
                (y.inner(), mean.inner(), var.inner(), dx, grad(&g), grad(&b))
            };
            let (a, b) = (run(true), run(false));
            let what = format!("case {case} ({c}×{m}, relu {relu})");
            for (name, d, tol) in [
                ("output", rel_diff(a.0, b.0), 2e-6),
                ("dx", rel_diff(a.3, b.3), 2e-5),
            ] {
                assert!(d < tol, "{what}: {name} differs by {d}");
            }
            for (name, d, tol) in [
                ("mean", rel_diff(a.1, b.1), 2e-6),
                ("var", rel_diff(a.2, b.2), 2e-6),
                ("dγ", rel_diff(a.4, b.4), 2e-5),
                ("dβ", rel_diff(a.5, b.5), 2e-5),
            ] {
                assert!(d < tol, "{what}: {name} differs by {d}");
            }
        }
    }
}

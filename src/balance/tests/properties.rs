//! Properties the methods' papers state, checked on the pure functions with no reference code:
//! aligned / opposite / zero gradients, simplex weights, non-conflict, KKT conditions,
//! permutation equivariance, scale invariance and two-task closed forms.
use super::*;
use crate::balance::aligned::aligned_mtl;
use crate::balance::autograd::gram;
use crate::balance::cagrad::cagrad;
use crate::balance::dbmtl::DbMtl;
use crate::balance::dwa::dwa_weights;
use crate::balance::famo::Famo;
use crate::balance::gls::gls_weights;
use crate::balance::gradnorm::GradNorm;
use crate::balance::gradvac::GradVac;
use crate::balance::imtl::{imtl, imtl_weights};
use crate::balance::mgda::{mgda, MgdaNormalization};
use crate::balance::nash::nash_mtl;
use crate::balance::nash::NASH_RIDGE;
use crate::balance::pcgrad::{pcgrad, pcgrad_coefficients, random_orders};
use crate::balance::rlw::rlw_weights;
use crate::balance::solvers::Mat;
use crate::balance::uncertainty::Uncertainty;
use crate::balance::upgrad::upgrad;
use crate::balance::Combination;

/// A gradient method as a function of (gradients, losses).
type Method = Box<dyn Fn(&Tensor, &Tensor) -> Combination>;

/// `(name, combine)` for every gradient method with default options and fresh state.
/// PCGrad and GradVac use the natural order (each task's others ascending).
fn all_methods() -> Vec<(&'static str, Method)> {
    let natural = |t: usize| -> Vec<Vec<usize>> { (0..t).map(|i| (0..t).filter(|&j| j != i).collect()).collect() };
    vec![
        ("mgda", Box::new(|g, l| mgda(g, l, MgdaNormalization::None).unwrap())),
        ("mgda-l2", Box::new(|g, l| mgda(g, l, MgdaNormalization::L2).unwrap())),
        ("mgda-loss+l2", Box::new(|g, l| mgda(g, l, MgdaNormalization::LossL2).unwrap())),
        ("pcgrad", Box::new(move |g: &Tensor, _| pcgrad(g, &natural(g.size()[0] as usize)).unwrap())),
        (
            "gradvac",
            Box::new(move |g: &Tensor, _| {
                let t = g.size()[0] as usize;
                GradVac::new(t, 0.5).combine(g, &natural(t)).unwrap()
            }),
        ),
        ("cagrad", Box::new(|g, _| cagrad(g, 0.5).unwrap())),
        ("imtl", Box::new(|g, _| imtl(g).unwrap())),
        ("nash", Box::new(|g, _| nash_mtl(g).unwrap())),
        ("aligned", Box::new(|g, _| aligned_mtl(g).unwrap())),
        ("dbmtl", Box::new(|g: &Tensor, l| DbMtl::new(g.size()[0] as usize, 0.9).combine(g, l).unwrap())),
        ("upgrad", Box::new(|g, _| upgrad(g, 1e-4).unwrap())),
        ("gradnorm", Box::new(|g: &Tensor, l| GradNorm::new(g.size()[0] as usize, 1.5, 0.025).combine(g, l).unwrap())),
    ]
}

fn ones(t: usize) -> Tensor {
    Tensor::ones([t as i64], (Kind::Double, tch::Device::Cpu))
}

fn losses(v: &[f64]) -> Tensor {
    Tensor::from_slice(v)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    dot(a, b) / (norm(a) * norm(b))
}

#[test]
fn degenerate_gradients_never_give_nan() {
    let cases = [
        ("zero", mat(&[vec![0.0; 3], vec![0.0; 3]])),
        ("one zero", mat(&[vec![1.0, 2.0, 0.0], vec![0.0; 3]])),
        ("parallel", mat(&[vec![1.0, 2.0, 0.0], vec![2.0, 4.0, 0.0]])),
        ("identical", mat(&[vec![1.0, -1.0, 3.0], vec![1.0, -1.0, 3.0], vec![1.0, -1.0, 3.0]])),
        ("opposite", mat(&[vec![1.0, 2.0, 0.0], vec![-1.0, -2.0, 0.0]])),
        ("opposite+zero", mat(&[vec![1.0, 2.0, 0.0], vec![-1.0, -2.0, 0.0], vec![0.0; 3]])),
        ("tiny", mat(&[vec![1e-30, 0.0, 0.0], vec![0.0, 1e-30, 0.0]])),
    ];
    for (case, g) in &cases {
        let t = g.size()[0] as usize;
        for (name, f) in all_methods() {
            let c = f(g, &ones(t));
            let (d, w) = (values(&c.direction), values(&c.weights));
            assert!(d.iter().chain(&w).all(|x| x.is_finite()), "{name} on {case}: d={d:?} w={w:?}");
            if name.starts_with("mgda") {
                assert_simplex(&w);
            }
        }
    }
}

#[test]
fn aligned_gradients_give_a_parallel_direction() {
    let g1 = vec![0.3, -1.2, 0.5, 2.0];
    let g = mat(&[g1.clone(), g1.iter().map(|x| 3.0 * x).collect()]);
    for (name, f) in all_methods() {
        let d = values(&f(&g, &losses(&[1.0, 2.0])).direction);
        assert!(cosine(&d, &g1) > 1.0 - 1e-9, "{name}: {d:?}");
    }
}

#[test]
fn mgda_opposite_gradients_of_equal_norm_cancel() {
    let g = mat(&[vec![1.0, -2.0, 0.5], vec![-1.0, 2.0, -0.5]]);
    let c = mgda(&g, &ones(2), MgdaNormalization::None).unwrap();
    assert_close(&values(&c.direction), &[0.0; 3], 1e-12);
    assert_close(&values(&c.weights), &[0.5, 0.5], 1e-12);
}

#[test]
fn mgda_two_task_closed_form() {
    let (a, b) = (vec![1.0, 0.5, -0.2], vec![-0.4, 1.0, 0.3]);
    let (m11, m22, m12) = (dot(&a, &a), dot(&b, &b), dot(&a, &b));
    let gamma = ((m22 - m12) / (m11 + m22 - 2.0 * m12)).clamp(0.0, 1.0);
    let c = mgda(&mat(&[a, b]), &ones(2), MgdaNormalization::None).unwrap();
    assert_close(&values(&c.weights), &[gamma, 1.0 - gamma], 1e-12);
}

#[test]
fn mgda_is_the_min_norm_point_kkt() {
    // Equal scales, and one row 1e6 larger (the optimum then lives on the small rows: each
    // condition is checked relative to its own row).
    for (seed, big) in (0..20).map(|s| (s, 1.0)).chain((20..30).map(|s| (s, 1e6))) {
        let g = random_grads(seed, 4, 6);
        let g = mat(&rows_of(&g)
            .iter()
            .enumerate()
            .map(|(i, r)| r.iter().map(|x| x * if i == 0 { big } else { 1.0 }).collect())
            .collect::<Vec<_>>());
        let c = mgda(&g, &ones(4), MgdaNormalization::None).unwrap();
        let (d, w) = (values(&c.direction), values(&c.weights));
        assert_simplex(&w);
        let d2 = dot(&d, &d);
        for (i, gi) in rows_of(&g).iter().enumerate() {
            let (gd, tol) = (dot(gi, &d), 1e-9 * norm(gi) * norm(&d));
            assert!(gd >= d2 - tol, "seed {seed}: g{i}·d = {gd} < ‖d‖² = {d2}");
            if w[i] * norm(gi) > 1e-7 * norm(&d) {
                assert!((gd - d2).abs() <= tol, "seed {seed}: support {i}: {gd} vs {d2}");
            }
        }
    }
}

#[test]
fn non_conflicting_methods_never_oppose_a_task() {
    for seed in 0..30 {
        let g = random_grads(100 + seed, 3, 4);
        let rows = rows_of(&g);
        let checks = [
            ("mgda", mgda(&g, &ones(3), MgdaNormalization::None).unwrap()),
            ("upgrad (no ridge)", upgrad(&g, 0.0).unwrap()),
        ];
        for (name, c) in checks {
            let d = values(&c.direction);
            for gi in &rows {
                assert!(dot(&d, gi) >= -1e-9 * norm(&d) * norm(gi), "{name} seed {seed}: {}", dot(&d, gi));
            }
        }
        // With TorchJD's ridge the guarantee is approximate: d·g_j ≥ −O(ε).
        let d = values(&upgrad(&g, 1e-4).unwrap().direction);
        for gi in &rows {
            assert!(dot(&d, gi) >= -1e-3 * norm(&d) * norm(gi), "upgrad seed {seed}");
        }
    }
}

#[test]
fn upgrad_weights_are_at_least_the_preference_and_orthogonal_is_the_mean() {
    let g = random_grads(7, 4, 5);
    let w = values(&upgrad(&g, 1e-4).unwrap().weights);
    assert!(w.iter().all(|v| *v >= 0.25 - 1e-12), "{w:?}");
    let ortho = mat(&[vec![2.0, 0.0, 0.0], vec![0.0, 0.5, 0.0], vec![0.0, 0.0, 1.0]]);
    assert_close(&values(&upgrad(&ortho, 1e-4).unwrap().weights), &[1.0 / 3.0; 3], 1e-12);
}

#[test]
fn imtl_projections_are_equal() {
    for seed in 0..20 {
        let g = random_grads(200 + seed, 4, 7);
        let c = imtl(&g).unwrap();
        let (d, w) = (values(&c.direction), values(&c.weights));
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-10);
        let proj: Vec<f64> = rows_of(&g).iter().map(|r| dot(&d, r) / norm(r)).collect();
        assert_close(&proj, &[proj[0]; 4], 1e-9);
    }
}

#[test]
fn imtl_equal_projections_can_all_be_negative() {
    // IMTL-G promises equal projections, not a non-conflicting step: here d opposes every task.
    let g = mat(&[vec![-0.7, -0.9, 0.1], vec![-2.9, -0.5, -0.3], vec![-0.5, -1.6, -0.2]]);
    let d = values(&imtl(&g).unwrap().direction);
    let proj: Vec<f64> = rows_of(&g).iter().map(|r| dot(&d, r) / norm(r)).collect();
    assert_close(&proj, &[proj[0]; 3], 1e-10);
    assert!(proj[0] < -6.0, "{proj:?}");
}

#[test]
fn imtl_dependent_gradients_give_a_zero_update_and_are_flagged() {
    let (a, b) = (vec![0.3, -1.2, 0.5], vec![1.1, 0.4, -0.7]);
    let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let scaled = |k: f64| sum.iter().map(|x| -k * x).collect::<Vec<_>>();
    let f32_rounded =
        |rows: Vec<Vec<f64>>| rows.iter().map(|r| r.iter().map(|&x| x as f32 as f64).collect()).collect::<Vec<_>>();
    let dependent = [
        ("[a, b, -(a+b)]", vec![a.clone(), b.clone(), scaled(1.0)]),
        ("[a, b, -2(a+b)]", vec![a.clone(), b.clone(), scaled(2.0)]),
        ("[a, b, -(a+b)] in f32", f32_rounded(vec![a.clone(), b.clone(), scaled(1.0)])),
        ("4 tasks, 2 parameters", rows_of(&random_grads(21, 4, 2))),
    ];
    for (case, rows) in dependent {
        let w = imtl_weights(&gram(&mat(&rows)).unwrap());
        assert!(w.dependent, "{case}");
        assert!((w.alpha.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{case}: {:?}", w.alpha);
        let d = values(&imtl(&mat(&rows)).unwrap().direction);
        let biggest = rows.iter().map(|r| norm(r)).fold(0.0, f64::max);
        assert!(norm(&d) <= 1e-6 * biggest, "{case}: {d:?}");
    }
    for seed in 0..10 {
        assert!(!imtl_weights(&gram(&random_grads(700 + seed, 3, 4)).unwrap()).dependent);
    }
}

#[test]
fn imtl_warns_once_per_run_about_dependent_gradients() {
    use crate::balance::imtl::Imtl;
    use crate::balance::{GradientMethod, StepContext};
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let dependent = mat(&[vec![1.0, 0.0], vec![0.0, 1.0], vec![-1.0, -1.0]]);
    let independent = random_grads(5, 2, 3);
    tracing::subscriber::with_default(subscriber, || {
        let mut method = Imtl::default();
        for (step, g) in [&independent, &dependent, &dependent, &independent, &dependent].into_iter().enumerate() {
            let ctx = StepContext {
                losses: &[],
                shared_params: &[],
                head_params: &[],
                features: None,
                task_weights: &[],
                step: step as u64,
                epoch: 0,
                seed: 0,
                ranks: None,
            };
            method.combine_step(g, &ones(g.size()[0] as usize), &ctx).unwrap();
        }
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("linearly dependent").count(), 1, "{text}");
    assert!(text.contains("imtl at step 1"), "{text}");
}

#[test]
fn imtl_two_task_closed_form() {
    let (a, b) = (vec![1.0, 0.5, -0.2], vec![-0.4, 3.0, 0.3]);
    let (n1, n2) = (norm(&a), norm(&b));
    let c = imtl(&mat(&[a, b])).unwrap();
    assert_close(&values(&c.weights), &[n2 / (n1 + n2), n1 / (n1 + n2)], 1e-12);
}

#[test]
fn pcgrad_two_task_closed_form_and_no_conflict_after_projection() {
    let (a, b) = (vec![1.0, 0.2, 0.0], vec![-0.8, 1.0, 0.5]);
    let g = mat(&[a.clone(), b.clone()]);
    let ab = dot(&a, &b);
    assert!(ab < 0.0);
    let pa: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - ab / dot(&b, &b) * y).collect();
    let pb: Vec<f64> = b.iter().zip(&a).map(|(y, x)| y - ab / dot(&a, &a) * x).collect();
    let want: Vec<f64> = pa.iter().zip(&pb).map(|(x, y)| x + y).collect();
    assert_close(&values(&pcgrad(&g, &[vec![1], vec![0]]).unwrap().direction), &want, 1e-12);
    for seed in 0..20 {
        let g = random_grads(300 + seed, 2, 5);
        let m = crate::balance::autograd::gram(&g).unwrap();
        let c = pcgrad_coefficients(&m, &[vec![1], vec![0]]);
        for (i, j) in [(0, 1), (1, 0)] {
            let proj: f64 = (0..2).map(|k| c[i][k] * m[(k, j)]).sum();
            assert!(proj >= -1e-12 * m.trace(), "seed {seed}: {proj}");
        }
    }
}

#[test]
fn pcgrad_orders_are_seeded_permutations() {
    let a = random_orders(5, 3, 10);
    assert_eq!(a, random_orders(5, 3, 10));
    assert!((0..20).any(|s| random_orders(5, 3, s) != a));
    for (i, o) in a.iter().enumerate() {
        let mut s = o.clone();
        s.sort_unstable();
        assert_eq!(s, (0..5).filter(|&j| j != i).collect::<Vec<_>>());
    }
    assert!(pcgrad(&random_grads(1, 3, 2), &[vec![1, 2], vec![0, 2], vec![0, 0]]).is_err());
}

#[test]
fn gradvac_starts_as_pcgrad_and_tracks_cosines() {
    let g = random_grads(11, 3, 4);
    let orders = random_orders(3, 1, 0);
    let mut gv = GradVac::new(3, 0.5);
    let a = values(&gv.combine(&g, &orders).unwrap().direction);
    let b = values(&pcgrad(&g, &orders).unwrap().direction);
    assert_close(&a, &b, 1e-10);
    let t = gv.targets();
    assert!((0..3).all(|i| (0..3).all(|j| i == j || (t[(i, j)].abs() > 0.0 && t[(i, j)].abs() <= 0.5))));
    // Aligned gradients: the target rises toward 1 and nothing is changed.
    let g = mat(&[vec![1.0, 1.0], vec![2.0, 2.0]]);
    let mut gv = GradVac::new(2, 0.5);
    for _ in 0..3 {
        let c = gv.combine(&g, &[vec![1], vec![0]]).unwrap();
        assert_close(&values(&c.weights), &[1.0, 1.0], 1e-12);
    }
    assert!((gv.targets()[(0, 1)] - 0.875).abs() < 1e-12);
}

#[test]
fn cagrad_maximises_the_worst_improvement_in_the_ball() {
    let alpha = 0.5;
    // T ≤ P, and T > P where the origin is usually inside the hull of the gradients.
    for (seed, t, p) in (0..10).map(|s| (s, 3, 4)).chain((10..20).map(|s| (s, 4 + s as usize % 2, 2 + s as usize % 2)))
    {
        let g = random_grads(400 + seed, t, p);
        let rows = rows_of(&g);
        let c = cagrad(&g, alpha).unwrap();
        let w = values(&c.weights);
        let d: Vec<f64> = values(&c.direction).iter().map(|x| x * (1.0 + alpha * alpha)).collect();
        let g0: Vec<f64> = (0..p).map(|k| rows.iter().map(|r| r[k]).sum::<f64>() / t as f64).collect();
        let radius = alpha * norm(&g0);
        let worst = |x: &[f64]| rows.iter().map(|r| dot(r, x)).fold(f64::INFINITY, f64::min);
        let offset: Vec<f64> = d.iter().zip(&g0).map(|(a, b)| a - b).collect();
        assert!((norm(&offset) - radius).abs() < 1e-9 * radius.max(1e-12), "seed {seed}");
        assert!(w.iter().sum::<f64>() > 0.0);
        // No point of the ball does better on the worst task (sampled).
        let best = worst(&d);
        for k in 0..200 {
            let u = values(&random_grads(1000 * seed + k, 1, p));
            let x: Vec<f64> = g0.iter().zip(&u).map(|(a, b)| a + radius * b / norm(&u)).collect();
            assert!(worst(&x) <= best + 1e-9, "seed {seed}: {} > {best}", worst(&x));
        }
    }
}

#[test]
fn cagrad_with_the_origin_inside_the_hull_is_not_the_mean() {
    // A reported failure case: three gradients around the origin. The optimum of the CAGrad problem
    // before the 1/(1+α²) factor, by SLSQP on the primal (tests/balance_optimum.py's
    // formulation, to ftol 1e-16), is d = [−0.33577136, −0.04473188]; the report quotes
    // [−0.335769, −0.044730] from a default-tolerance solve. Falling back to the mean gave
    // [−0.379236, 0.131712].
    let g = mat(&[vec![-1.48987, 0.49396], vec![0.58870, -0.89139], vec![-0.52097, 0.89135]]);
    let c = cagrad(&g, 0.5).unwrap();
    let d: Vec<f64> = values(&c.direction).iter().map(|x| x * 1.25).collect();
    assert_close(&d, &[-0.33577136, -0.04473188], 1e-7);
    let w = values(&c.weights);
    assert!(w.iter().any(|x| (x - w[0]).abs() > 0.01), "equal weights: the mean {w:?}");
}

#[test]
fn cagrad_without_a_correction_direction_takes_the_no_conflict_point_nearest_the_mean() {
    // [a, −a, b]: the origin is on an edge of the hull and g_w = 0 at the optimum. Every point
    // of the ball with no conflict is then optimal (value 0); the nearest to the mean b/3 is b
    // with its a-component removed, /3. The mean itself conflicts with −a (a·b > 0).
    let (a, b) = (vec![1.0, 0.0, 0.0], vec![0.3, 0.9, 0.2]);
    let g = mat(&[a.clone(), a.iter().map(|x| -x).collect(), b.clone()]);
    let d: Vec<f64> = values(&cagrad(&g, 0.5).unwrap().direction).iter().map(|x| x * 1.25).collect();
    assert_close(&d, &[0.0, 0.3, 0.2 / 3.0], 1e-12);
    // α = 1 and the origin strictly inside the hull: the ball reaches the origin, and d = 0 is
    // the only point with value 0 (the mean would conflict with a task).
    let g = mat(&[vec![1.0, 0.0], vec![-0.5, 0.9], vec![-0.4, -0.8]]);
    assert_close(&values(&cagrad(&g, 1.0).unwrap().direction), &[0.0, 0.0], 1e-12);
}

#[test]
fn cagrad_without_radius_is_the_scaled_mean() {
    let g = mat(&[vec![1.0, 0.0], vec![-1.0, 0.0]]);
    let c = cagrad(&g, 0.5).unwrap();
    assert_close(&values(&c.direction), &[0.0, 0.0], 1e-12);
    let c = cagrad(&random_grads(3, 3, 3), 0.0).unwrap();
    assert_close(&values(&c.weights), &[1.0 / 3.0; 3], 1e-12);
}

/// Nash-MTL's matrix: `M̃ = (M + ridge·diag(M)) / ‖M‖_F`.
fn nash_matrix(g: &Tensor) -> Mat {
    let m = gram(g).unwrap();
    Mat::from_fn(m.n(), |i, j| (m[(i, j)] + if i == j { NASH_RIDGE * m[(i, i)] } else { 0.0 }) / m.frobenius())
}

#[test]
fn nash_solves_the_bargaining_equations() {
    for (seed, big) in [(17, 1.0), (18, 1e6)] {
        let g = &random_grads(seed, 3, 5) * Tensor::from_slice(&[big, 1.0, 1.0]).unsqueeze(1);
        let w = values(&nash_mtl(&g).unwrap().weights);
        let mw = nash_matrix(&g).mul_vec(&w);
        for i in 0..3 {
            assert!((w[i] * mw[i] - 1.0).abs() < 1e-9, "{w:?}");
        }
    }
    // Orthogonal gradients: α_i = 1/√(M̃_ii).
    let g = mat(&[vec![3.0, 0.0], vec![0.0, 1.0]]);
    let fro = (81.0f64 + 1.0).sqrt();
    let want = [1.0 / (9.0 * (1.0 + NASH_RIDGE) / fro).sqrt(), 1.0 / ((1.0 + NASH_RIDGE) / fro).sqrt()];
    assert_close(&values(&nash_mtl(&g).unwrap().weights), &want, 1e-10);
}

#[test]
fn nash_is_invariant_to_each_tasks_scale() {
    // Rescaling a task's gradient by s rescales its α by 1/s (up to the common factor of the
    // Frobenius normalisation) and leaves the direction alone (the relative ridge keeps it
    // so), even for scales 1e6 apart.
    let g = random_grads(19, 3, 4);
    let s = [1e6, 1.0, 1e-3];
    let gs = &g * Tensor::from_slice(&s).unsqueeze(1);
    let (a, b) = (nash_mtl(&g).unwrap(), nash_mtl(&gs).unwrap());
    let (wa, wb) = (values(&a.weights), values(&b.weights));
    let ratio: Vec<f64> = (0..3).map(|i| wb[i] * s[i] / wa[i]).collect();
    assert_close(&ratio, &[ratio[0]; 3], 1e-9);
    assert!(cosine(&values(&b.direction), &values(&a.direction)) > 1.0 - 1e-12);
    // A task with a zero gradient has no stake in the shared direction: weight 0.
    let z = mat(&[vec![1.0, 0.5, 0.0], vec![0.0; 3], vec![-0.2, 1.0, 0.3]]);
    let w = values(&nash_mtl(&z).unwrap().weights);
    assert!(w[1] == 0.0 && w[0] > 0.0 && w[2] > 0.0, "{w:?}");
}

#[test]
fn aligned_orthogonal_closed_form() {
    let g = mat(&[vec![3.0, 0.0], vec![0.0, 1.0]]);
    let c = aligned_mtl(&g).unwrap();
    assert_close(&values(&c.weights), &[1.0 / 3.0, 1.0], 1e-12);
    assert_close(&values(&c.direction), &[1.0, 1.0], 1e-12);
    // Norms 1e6 apart are balanced too (the reference code's λ_max·T·ε_f32 cut-off drops the
    // small task's eigenvalue, 1e-12 of the largest): α_i = min‖g‖ / ‖g_i‖.
    let g = mat(&[vec![1e6, 0.0, 0.0], vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1e-3]]);
    let w = values(&aligned_mtl(&g).unwrap().weights);
    for (got, want) in w.iter().zip([1e-9, 1e-3, 1.0]) {
        assert!((got - want).abs() <= 1e-12 * want, "{w:?}");
    }
}

#[test]
fn aligned_keeps_a_task_1e6_smaller() {
    // Two tasks: M^{1/2} = (M + sI)/t with s = √det M, t = √(tr M + 2s), and
    // α = √λ_min M^{-1/2} 1 in closed form.
    let (a, b) = (vec![1e6, 0.0], vec![0.3, 0.95]);
    let m = gram(&mat(&[a.clone(), b.clone()])).unwrap();
    let (tr, det) = (m.trace(), m[(0, 0)] * m[(1, 1)] - m[(0, 1)] * m[(0, 1)]);
    let (s, t) = (det.sqrt(), (tr + 2.0 * det.sqrt()).sqrt());
    let lmin = det / (0.5 * (tr + (tr * tr - 4.0 * det).sqrt()));
    // (M + sI)⁻¹ 1 by Cramer's rule.
    let (p, q, r) = (m[(0, 0)] + s, m[(0, 1)], m[(1, 1)] + s);
    let inv_one = [(r - q) / (p * r - q * q), (p - q) / (p * r - q * q)];
    let want: Vec<f64> = inv_one.iter().map(|v| lmin.sqrt() * t * v).collect();
    let c = aligned_mtl(&mat(&[a, b.clone()])).unwrap();
    let w = values(&c.weights);
    for i in 0..2 {
        assert!((w[i] - want[i]).abs() <= 1e-9 * want[i].abs(), "{w:?} vs {want:?}");
    }
    assert!(dot(&values(&c.direction), &b) > 0.0);
}

#[test]
fn aligned_drops_dependent_directions_at_f32_precision() {
    // [a, b, −2(a+b)]: exactly dependent in f64, dependent up to rounding in f32. Both must
    // leave the null direction out (keeping it would scale the step down to its ~1e-7
    // singular value and point it at rounding noise). ([a, b, −(a+b)] has 1 in the null
    // space of M, so Aligned-MTL's B·1 is exactly 0 there.)
    let (a, b) = (vec![0.3, -1.2, 0.5, 0.1], vec![1.1, 0.4, -0.7, 2.0]);
    let c: Vec<f64> = a.iter().zip(&b).map(|(x, y)| -2.0 * (x + y)).collect();
    let exact = values(&aligned_mtl(&mat(&[a.clone(), b.clone(), c.clone()])).unwrap().direction);
    let rounded: Vec<Vec<f64>> = [a, b, c].iter().map(|r| r.iter().map(|&x| x as f32 as f64).collect()).collect();
    let noisy = values(&aligned_mtl(&mat(&rounded)).unwrap().direction);
    assert!(norm(&exact) > 0.1, "{exact:?}");
    assert_close(&noisy, &exact, 1e-5);
}

#[test]
fn dbmtl_single_step_and_ema() {
    let (g, l) = (mat(&[vec![2.0, 0.0], vec![0.0, 1.0]]), losses(&[2.0, 0.5]));
    let mut db = DbMtl::new(2, 0.9);
    let c = db.combine(&g, &l).unwrap();
    // Log-gradients: [1, 0] and [0, 2]; EMA ×0.1; α = max‖ĝ‖/‖ĝ_i‖ = [2, 1].
    assert_close(&values(&c.weights), &[2.0, 1.0], 1e-7);
    assert_close(&values(&c.direction), &[0.2, 0.2], 1e-7);
    let c = db.combine(&mat(&[vec![0.0, 2.0], vec![0.0, 1.0]]), &l).unwrap();
    // ĝ1 = 0.9·[0.1, 0] + 0.1·[0, 1]; ĝ2 = 0.9·[0, 0.2] + 0.1·[0, 2].
    let e1 = [0.09, 0.1];
    let e2 = [0.0, 0.38];
    let a1 = norm(&e2) / norm(&e1);
    assert_close(&values(&c.weights), &[a1, 1.0], 1e-7);
    assert_close(&values(&c.direction), &[a1 * e1[0], a1 * e1[1] + e2[1]], 1e-7);
}

#[test]
fn gradnorm_moves_weight_toward_the_smaller_gradient() {
    let g = mat(&[vec![4.0, 0.0], vec![0.0, 1.0]]);
    let mut gn = GradNorm::new(2, 1.5, 0.025);
    let first = values(&gn.combine(&g, &losses(&[1.0, 1.0])).unwrap().weights);
    assert_close(&first, &[1.0, 1.0], 1e-12);
    for _ in 0..20 {
        gn.combine(&g, &losses(&[1.0, 1.0])).unwrap();
    }
    let w = gn.weights().unwrap();
    assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-12);
    assert!(w[0] < 1.0 && w[1] > 1.0, "{w:?}");
    // Equal gradient norms and equal loss ratios: nothing to balance.
    let mut gn = GradNorm::new(2, 1.5, 0.025);
    for _ in 0..5 {
        gn.combine(&mat(&[vec![1.0, 0.0], vec![0.0, 1.0]]), &losses(&[1.0, 3.0])).unwrap();
    }
    assert_close(&gn.weights().unwrap(), &[1.0, 1.0], 1e-12);
}

#[test]
fn permuting_tasks_permutes_weights() {
    let perm = [2usize, 0, 3, 1];
    for seed in 0..5 {
        let g = random_grads(500 + seed, 4, 6);
        let l = losses(&[0.5, 1.0, 2.0, 1.5]);
        let rows = rows_of(&g);
        let lv = values(&l);
        let gp = mat(&perm.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>());
        let lp = losses(&perm.iter().map(|&i| lv[i]).collect::<Vec<_>>());
        for (name, f) in all_methods() {
            if name == "pcgrad" || name == "gradvac" {
                continue; // order-dependent by design; checked below with permuted orders
            }
            let (a, b) = (f(&g, &l), f(&gp, &lp));
            let wa = values(&a.weights);
            let want: Vec<f64> = perm.iter().map(|&i| wa[i]).collect();
            assert_close(&values(&b.weights), &want, 1e-7);
            assert_close(&values(&b.direction), &values(&a.direction), 1e-7);
        }
        let orders = random_orders(4, seed, 0);
        let inv: Vec<usize> = (0..4).map(|i| perm.iter().position(|&p| p == i).unwrap()).collect();
        let porders: Vec<Vec<usize>> = perm.iter().map(|&i| orders[i].iter().map(|&j| inv[j]).collect()).collect();
        let a = values(&pcgrad(&g, &orders).unwrap().direction);
        let b = values(&pcgrad(&gp, &porders).unwrap().direction);
        assert_close(&a, &b, 1e-10);
    }
}

#[test]
fn normalized_methods_ignore_the_loss_scale() {
    let g = random_grads(600, 3, 5);
    let l = losses(&[0.5, 1.0, 2.0]);
    let (g10, l10) = (&g * 10.0, &l * 10.0);
    let checks: Vec<(&str, Method)> = vec![
        ("mgda-l2", Box::new(|g, l| mgda(g, l, MgdaNormalization::L2).unwrap())),
        ("mgda-loss", Box::new(|g, l| mgda(g, l, MgdaNormalization::Loss).unwrap())),
        ("imtl", Box::new(|g, _| imtl(g).unwrap())),
        ("nash", Box::new(|g, _| nash_mtl(g).unwrap())),
        ("aligned", Box::new(|g, _| aligned_mtl(g).unwrap())),
        ("upgrad", Box::new(|g, _| upgrad(g, 1e-4).unwrap())),
        ("cagrad", Box::new(|g, _| cagrad(g, 0.5).unwrap())),
        ("mgda", Box::new(|g, l| mgda(g, l, MgdaNormalization::None).unwrap())),
    ];
    for (name, f) in checks {
        let (a, b) = (values(&f(&g, &l).weights), values(&f(&g10, &l10).weights));
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(err <= 1e-8 * a.iter().fold(1.0f64, |m, v| m.max(v.abs())), "{name}: {a:?} vs {b:?}");
    }
    // DB-MTL: log-gradients g/l are unchanged, so is everything.
    let a = DbMtl::new(3, 0.9).combine(&g, &l).unwrap();
    let b = DbMtl::new(3, 0.9).combine(&g10, &l10).unwrap();
    assert_close(&values(&b.direction), &values(&a.direction), 1e-6);
}

#[test]
fn dwa_weights_sum_to_t_and_favour_slow_tasks() {
    let w = dwa_weights(&[1.0, 0.5, 0.9], &[1.0, 1.0, 1.0], 2.0);
    assert!((w.iter().sum::<f64>() - 3.0).abs() < 1e-12);
    assert!(w[0] > w[2] && w[2] > w[1]);
    assert_close(&dwa_weights(&[2.0, 2.0], &[4.0, 4.0], 2.0), &[1.0, 1.0], 1e-12);
    assert_finite(&dwa_weights(&[1.0, 1.0], &[0.0, f64::NAN], 2.0));
}

#[test]
fn gls_weights_are_the_geometric_mean_gradient() {
    let w = values(&gls_weights(&losses(&[1.0, 4.0])));
    // L = 2; w_i = L / (2 l_i)
    assert_close(&w, &[1.0, 0.25], 1e-6);
    assert_finite(&values(&gls_weights(&losses(&[0.0, 4.0]))));
}

#[test]
fn rlw_weights_are_seeded_softmax() {
    let w = rlw_weights(4, 9, 3);
    assert_simplex(&w);
    assert_eq!(w, rlw_weights(4, 9, 3));
    assert_ne!(w, rlw_weights(4, 9, 4));
    assert_ne!(w, rlw_weights(4, 10, 3));
}

#[test]
fn famo_weights_and_logit_update() {
    let mut famo = Famo::new(2, 0.025, 1e-3);
    let w = values(&famo.weights(&losses(&[1.0, 4.0])));
    assert_close(&w, &[0.8, 0.2], 1e-6);
    // Task 0 improved a lot, task 1 not at all: the logits shift toward task 1.
    famo.update(&losses(&[0.5, 4.0]));
    let xi = values(famo.logits());
    assert!(xi[1] > xi[0], "{xi:?}");
    // Without new weights, a second update is a no-op.
    famo.update(&losses(&[0.1, 4.0]));
    assert_eq!(values(famo.logits()), xi);
}

#[test]
fn uncertainty_log_variance_tracks_the_log_loss() {
    let mut u = Uncertainty::new(2, 0.05);
    for _ in 0..600 {
        let _ = u.weights(&losses(&[4.0, 0.25]));
    }
    let s = values(u.log_vars());
    assert_close(&s, &[4f64.ln(), 0.25f64.ln()], 0.02);
}

#[test]
fn solver_weights_mats_are_consistent() {
    // The Mat helpers used by the methods agree with the tensor Gram matrix.
    let g = random_grads(5, 3, 4);
    let m = crate::balance::autograd::gram(&g).unwrap();
    let rows = rows_of(&g);
    let want = Mat::from_fn(3, |i, j| dot(&rows[i], &rows[j]));
    assert_close(m.values(), want.values(), 1e-12);
}

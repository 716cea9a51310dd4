//! Fréchet distance between Gaussians fitted to two feature sets (the FID / FVD formula):
//!
//! ```text
//! d² = ||μa − μb||² + Tr(Σa) + Tr(Σb) − 2·Tr((Σa Σb)^{1/2})
//! ```
//!
//! pytorch-fid takes a general matrix square root of `Σa Σb` (which is not symmetric) and
//! discards the imaginary part it picks up from rounding. We avoid the non-symmetric problem:
//! with `S = Σa^{1/2}`, `Σa Σb = S (S Σb S) S^{-1}` is similar to the symmetric PSD matrix
//! `M = S Σb S`, so they share eigenvalues and `Tr((Σa Σb)^{1/2}) = Σ sqrt(λ_i(M))`. That needs
//! only a symmetric eigensolver ([`symmetric_eigen`]), works for singular covariances (fewer
//! samples than dimensions) and never produces complex numbers.

use crate::error::{EvalError, Result};
use serde::{Deserialize, Serialize};

/// Mean and covariance of a feature set; serialisable so reference statistics can be cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gaussian {
    /// Mean vector, `dim` entries.
    pub mean: Vec<f64>,
    /// Unbiased covariance, `dim × dim`, row-major.
    pub cov: Vec<f64>,
    /// Feature dimension.
    pub dim: usize,
    /// How many vectors it was fitted to.
    pub count: usize,
}

impl Gaussian {
    /// Fits mean and unbiased covariance (divisor `n − 1`); needs at least 2 finite vectors of one length.
    pub fn fit(features: &[Vec<f32>]) -> Result<Gaussian> {
        let count = features.len();
        if count < 2 {
            return Err(EvalError::out_of_range(
                "feature vector count",
                count,
                "at least 2 (a covariance needs two samples)",
            ));
        }
        let dim = features[0].len();
        if dim == 0 {
            return Err(EvalError::Mismatch("feature vectors are empty (dimension 0)".into()));
        }
        for (i, f) in features.iter().enumerate() {
            if f.len() != dim {
                return Err(EvalError::Mismatch(format!(
                    "feature vector {i} has {} entries but vector 0 has {dim}",
                    f.len()
                )));
            }
            if let Some(k) = f.iter().position(|x| !x.is_finite()) {
                return Err(EvalError::out_of_range(format!("feature vector {i}, entry {k}"), f[k], "a finite number"));
            }
        }

        let n = count as f64;
        let mut mean = vec![0.0f64; dim];
        for f in features {
            for (m, &x) in mean.iter_mut().zip(f) {
                *m += f64::from(x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);

        // Centre first: the one-pass `E[xy] − E[x]E[y]` form cancels badly when features sit
        // far from the origin (CLIP/DINO embeddings often do).
        let centred: Vec<f64> =
            features.iter().flat_map(|f| f.iter().zip(&mean).map(|(&x, &m)| f64::from(x) - m)).collect();
        let mut cov = vec![0.0f64; dim * dim];
        for row in centred.chunks_exact(dim) {
            for (i, &xi) in row.iter().enumerate() {
                if xi == 0.0 {
                    continue;
                }
                let out = &mut cov[i * dim..i * dim + i + 1];
                for (c, &xj) in out.iter_mut().zip(&row[..=i]) {
                    *c += xi * xj;
                }
            }
        }
        for i in 0..dim {
            for j in 0..=i {
                let v = cov[i * dim + j] / (n - 1.0);
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(Gaussian { mean, cov, dim, count })
    }

    /// Checks the shape invariants (the fields are public, and a cached file may be edited).
    fn validate(&self, name: &str) -> Result<()> {
        if self.dim == 0 || self.mean.len() != self.dim || self.cov.len() != self.dim * self.dim {
            return Err(EvalError::Mismatch(format!(
                "Gaussian {name}: dim {} with {} mean entries and {} covariance entries (expected dim ≥ 1, dim, dim²)",
                self.dim,
                self.mean.len(),
                self.cov.len()
            )));
        }
        if self.mean.iter().chain(&self.cov).any(|x| !x.is_finite()) {
            return Err(EvalError::Mismatch(format!("Gaussian {name} has non-finite mean or covariance entries")));
        }
        Ok(())
    }
}

/// Squared Fréchet distance between two Gaussians (FID when fitted to Inception features).
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    frechet_distance_eps(a, b, 0.0)
}

/// [`frechet_distance`] with `eps·I` added to both covariances inside the cross term only.
///
/// This mirrors pytorch-fid's fallback offset for near-singular products. Our eigenvalue route
/// does not need it to stay finite, but a small ridge (e.g. 1e-6) steadies the cross term when
/// both sets have fewer samples than dimensions; it biases the result by about `−2·eps·dim`.
pub fn frechet_distance_eps(a: &Gaussian, b: &Gaussian, eps: f64) -> Result<f64> {
    a.validate("a")?;
    b.validate("b")?;
    if a.dim != b.dim {
        return Err(EvalError::Mismatch(format!("Gaussians of dimension {} and {} cannot be compared", a.dim, b.dim)));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(EvalError::out_of_range("eps", eps, "a finite number ≥ 0"));
    }
    let d = a.dim;
    let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    let (tr_a, tr_b) = (trace(&a.cov), trace(&b.cov));

    let ridge = |m: &[f64]| {
        let mut m = m.to_vec();
        (0..d).for_each(|i| m[i * d + i] += eps);
        m
    };
    let (ca, cb) = (ridge(&a.cov), ridge(&b.cov));
    let s = psd_sqrt(&ca, d);
    let mut m = matmul(&matmul(&s, &cb, d), &s, d);
    symmetrize(&mut m, d);
    let (eigenvalues, _) = symmetric_eigen(&m, d);
    let tr_covmean: f64 = eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).sum();

    let dist = mean_term + tr_a + tr_b - 2.0 * tr_covmean;
    // Rounding can push an exact zero (a set against itself) slightly negative.
    Ok(dist.max(0.0))
}

/// Symmetric eigendecomposition `A = V Λ Vᵀ` of a row-major `n × n` matrix.
///
/// Returns the eigenvalues ascending and `V` row-major with eigenvector `k` in column `k`.
/// Only one triangle of `a` is read. Householder tridiagonalisation followed by implicit
/// QL (the EISPACK `tred2`/`tql2` pair, as in JAMA): about `9n³` flops, several times fewer
/// than cyclic Jacobi, which matters at feature dimensions of a few hundred. Non-finite input
/// gives all-NaN output rather than a hang.
///
/// # Panics
/// If `a.len() != n * n` (a programming error: callers build the matrix).
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "symmetric_eigen: matrix has {} entries, expected {n}×{n}", a.len());
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    if a.iter().any(|x| !x.is_finite()) {
        return (vec![f64::NAN; n], vec![f64::NAN; n * n]);
    }
    // Both passes walk columns of V in their inner loops, so V is kept column-major (that is,
    // `vt` holds Vᵀ row-major); since A is symmetric, reading it as column-major is free.
    let mut vt = a.to_vec();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tred2(&mut vt, &mut d, &mut e, n);
    tql2(&mut vt, &mut d, &mut e, n);

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
    let values = order.iter().map(|&k| d[k]).collect();
    let mut vectors = vec![0.0; n * n];
    for (col, &k) in order.iter().enumerate() {
        for row in 0..n {
            vectors[row * n + col] = vt[k * n + row];
        }
    }
    (values, vectors)
}

/// Householder reduction to tridiagonal form: on return `d` is the diagonal, `e[1..]` the
/// subdiagonal and `v` the accumulated orthogonal transform, stored column-major.
fn tred2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    let at = |i: usize, j: usize| j * n + i;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        // Scaling by the row's L1 norm keeps h from under- or overflowing.
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for x in d[..i].iter_mut() {
                *x /= scale;
                h += *x * *x;
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].iter_mut().for_each(|x| *x = 0.0);
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL on the tridiagonal `(d, e)`; `vt` is the transpose of the transform from
/// [`tred2`] and ends as the transposed eigenvector matrix (eigenvector `k` in row `k`).
fn tql2(vt: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    // Convergence normally takes 1–3 iterations per eigenvalue; the cap only guards against
    // pathological input looping forever.
    const MAX_ITER: usize = 64;
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1 = 0.0f64;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in d[l + 2..].iter_mut() {
                    *x -= h;
                }
                f += h;

                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = vt.split_at_mut((i + 1) * n);
                    let row_i = &mut lo[i * n..];
                    let row_next = &mut hi[..n];
                    for (a, b) in row_i.iter_mut().zip(row_next.iter_mut()) {
                        let t = *b;
                        *b = s * *a + c * t;
                        *a = c * *a - s * t;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 || iter >= MAX_ITER {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
}

/// `A^{1/2}` of a symmetric PSD matrix, clamping the tiny negative eigenvalues rounding leaves.
fn psd_sqrt(a: &[f64], n: usize) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(a, n);
    let roots: Vec<f64> = values.iter().map(|&l| l.max(0.0).sqrt()).collect();
    // V diag(√λ) Vᵀ, built as (V diag(√λ)) times Vᵀ.
    let scaled: Vec<f64> = vectors.iter().enumerate().map(|(idx, &x)| x * roots[idx % n]).collect();
    let mut out = matmul(&scaled, &transpose(&vectors, n), n);
    symmetrize(&mut out, n);
    out
}

/// Row-major `n × n` product.
fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    use rayon::prelude::*;
    let mut out = vec![0.0; n * n];
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (k, &aik) in a[i * n..(i + 1) * n].iter().enumerate() {
            if aik == 0.0 {
                continue;
            }
            for (o, &bkj) in row.iter_mut().zip(&b[k * n..(k + 1) * n]) {
                *o += aik * bkj;
            }
        }
    });
    out
}

fn transpose(a: &[f64], n: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = a[i * n + j];
        }
    }
    t
}

/// Averages `A` with its transpose so rounding asymmetry does not leak into the eigensolver,
/// which reads only one triangle.
fn symmetrize(a: &mut [f64], n: usize) {
    for i in 0..n {
        for j in 0..i {
            let m = 0.5 * (a[i * n + j] + a[j * n + i]);
            a[i * n + j] = m;
            a[j * n + i] = m;
        }
    }
}

//! Integer tensors kept on the host: the shape arithmetic that exporters emit around
//! `Reshape` (`Shape`, `Gather`, `Concat`, `Unsqueeze`...) runs here, exactly, in i64.

use super::proto::MAX_ELEMENTS;

/// A small integer tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ints {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<i64>,
}

impl Ints {
    pub(crate) fn vector(data: Vec<i64>) -> Self {
        Ints {
            shape: vec![data.len()],
            data,
        }
    }

    #[cfg(test)]
    pub(crate) fn scalar(v: i64) -> Self {
        Ints {
            shape: vec![],
            data: vec![v],
        }
    }

    pub(crate) fn reshape(self, shape: Vec<usize>) -> Result<Self, String> {
        if shape.iter().product::<usize>() != self.data.len() {
            return Err(format!(
                "cannot reshape {} values to {shape:?}",
                self.data.len()
            ));
        }
        Ok(Ints {
            shape,
            data: self.data,
        })
    }
}

/// Strides of a row-major shape.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// NumPy broadcasting of two shapes.
pub(crate) fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    let n = out
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS);
    if n.is_none() {
        return Err(format!("broadcast shape {out:?} is too large"));
    }
    Ok(out)
}

/// Elementwise integer arithmetic with broadcasting.
pub(crate) fn binary(
    a: &Ints,
    b: &Ints,
    f: impl Fn(i64, i64) -> Option<i64>,
) -> Result<Ints, String> {
    let shape = broadcast_shapes(&a.shape, &b.shape)?;
    let r = shape.len();
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut p = vec![1; r - s.len()];
        p.extend_from_slice(s);
        p
    };
    let (sa, sb) = (pad(&a.shape), pad(&b.shape));
    let (ta, tb) = (strides(&sa), strides(&sb));
    let n: usize = shape.iter().product();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; r];
    for _ in 0..n {
        let (mut ia, mut ib) = (0, 0);
        for d in 0..r {
            if sa[d] != 1 {
                ia += idx[d] * ta[d];
            }
            if sb[d] != 1 {
                ib += idx[d] * tb[d];
            }
        }
        data.push(f(a.data[ia], b.data[ib]).ok_or("integer overflow or division by zero")?);
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(Ints { shape, data })
}

/// `Gather` along `axis` with (already normalised, in-range) indices.
pub(crate) fn gather(data: &Ints, axis: usize, idx: &Ints) -> Ints {
    let outer: usize = data.shape[..axis].iter().product();
    let inner: usize = data.shape[axis + 1..].iter().product();
    let dim = data.shape[axis];
    let mut out = Vec::with_capacity(outer * idx.data.len() * inner);
    for o in 0..outer {
        for &i in &idx.data {
            let start = (o * dim + i as usize) * inner;
            out.extend_from_slice(&data.data[start..start + inner]);
        }
    }
    let mut shape = data.shape[..axis].to_vec();
    shape.extend_from_slice(&idx.shape);
    shape.extend_from_slice(&data.shape[axis + 1..]);
    Ints { shape, data: out }
}

/// Concatenation along `axis` of tensors whose other dimensions agree.
pub(crate) fn concat(parts: &[Ints], axis: usize) -> Result<Ints, String> {
    let first = parts.first().ok_or("nothing to concatenate")?;
    let rank = first.shape.len();
    if axis >= rank {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    for p in parts {
        if p.shape.len() != rank
            || p.shape[..axis] != first.shape[..axis]
            || p.shape[axis + 1..] != first.shape[axis + 1..]
        {
            return Err(format!(
                "cannot concatenate shapes {:?} and {:?} on axis {axis}",
                first.shape, p.shape
            ));
        }
    }
    let outer: usize = first.shape[..axis].iter().product();
    let inner: usize = first.shape[axis + 1..].iter().product();
    let mut data = Vec::new();
    for o in 0..outer {
        for p in parts {
            let len = p.shape[axis] * inner;
            data.extend_from_slice(&p.data[o * len..(o + 1) * len]);
        }
    }
    let mut shape = first.shape.clone();
    shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
    Ok(Ints { shape, data })
}

/// A strided slice along each axis (`ranges[d]` = (start, len, step), step ≥ 1).
pub(crate) fn slice(t: &Ints, ranges: &[(usize, usize, usize)]) -> Ints {
    let shape: Vec<usize> = ranges.iter().map(|r| r.1).collect();
    let st = strides(&t.shape);
    let n: usize = shape.iter().product();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        let off: usize = (0..shape.len())
            .map(|d| (ranges[d].0 + idx[d] * ranges[d].2) * st[d])
            .sum();
        data.push(t.data[off]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ints { shape, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_arithmetic() {
        let a = Ints {
            shape: vec![2, 1],
            data: vec![1, 2],
        };
        let b = Ints::vector(vec![10, 20, 30]);
        let c = binary(&a, &b, |x, y| x.checked_mul(y)).unwrap();
        assert_eq!(c.shape, vec![2, 3]);
        assert_eq!(c.data, vec![10, 20, 30, 20, 40, 60]);
        assert!(binary(&a, &Ints::scalar(0), |x, y| x.checked_div(y)).is_err());
        assert!(broadcast_shapes(&[2, 3], &[4]).is_err());
    }

    #[test]
    fn gather_concat_slice() {
        let t = Ints {
            shape: vec![2, 3],
            data: vec![0, 1, 2, 3, 4, 5],
        };
        let g = gather(&t, 1, &Ints::vector(vec![2, 0]));
        assert_eq!(g.data, vec![2, 0, 5, 3]);
        let c = concat(&[t.clone(), t.clone()], 0).unwrap();
        assert_eq!(c.shape, vec![4, 3]);
        let s = slice(&t, &[(1, 1, 1), (0, 2, 2)]);
        assert_eq!(s.data, vec![3, 5]);
    }
}

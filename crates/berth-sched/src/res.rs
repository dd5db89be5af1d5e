//! Integer resource vectors used inside the algorithms: cpus in thousandths,
//! mem and disk in MiB. Integers keep fit checks and sums exact, so the same
//! snapshot always yields the same decision.

use berth_types::Resources;

/// `[millicpus, mem MiB, disk MiB]`.
pub(crate) type Vec3 = [u64; 3];

pub(crate) fn vec3(r: &Resources) -> Vec3 {
    let millis = if r.cpus.is_finite() && r.cpus > 0.0 {
        // `as` saturates, so absurd values cannot wrap.
        (r.cpus * 1000.0).round() as u64
    } else {
        0
    };
    [millis, r.mem, r.disk]
}

pub(crate) fn resources(v: &Vec3) -> Resources {
    Resources::new(v[0] as f64 / 1000.0, v[1], v[2])
}

pub(crate) fn add(a: &Vec3, b: &Vec3) -> Vec3 {
    [
        a[0].saturating_add(b[0]),
        a[1].saturating_add(b[1]),
        a[2].saturating_add(b[2]),
    ]
}

pub(crate) fn sub(a: &Vec3, b: &Vec3) -> Vec3 {
    [
        a[0].saturating_sub(b[0]),
        a[1].saturating_sub(b[1]),
        a[2].saturating_sub(b[2]),
    ]
}

pub(crate) fn scale(a: &Vec3, k: u64) -> Vec3 {
    [
        a[0].saturating_mul(k),
        a[1].saturating_mul(k),
        a[2].saturating_mul(k),
    ]
}

pub(crate) fn is_zero(a: &Vec3) -> bool {
    a.iter().all(|&x| x == 0)
}

/// How many copies of `need` fit in `have`; `u64::MAX` when `need` is zero.
pub(crate) fn fit_count(have: &Vec3, need: &Vec3) -> u64 {
    have.iter()
        .zip(need)
        .filter(|(_, &n)| n > 0)
        .map(|(&h, &n)| h / n)
        .min()
        .unwrap_or(u64::MAX)
}

pub(crate) fn fits(have: &Vec3, need: &Vec3) -> bool {
    have.iter().zip(need).all(|(h, n)| h >= n)
}

/// Largest per-dimension fraction of `total`; dimensions the cluster does
/// not have at all are ignored rather than dividing by zero.
pub(crate) fn share(alloc: &Vec3, total: &Vec3) -> f64 {
    alloc
        .iter()
        .zip(total)
        .filter(|(_, &t)| t > 0)
        .map(|(&a, &t)| a as f64 / t as f64)
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fit() {
        let r = Resources::new(2.5, 1024, 7);
        assert_eq!(vec3(&r), [2500, 1024, 7]);
        assert_eq!(resources(&vec3(&r)), r);
        assert_eq!(fit_count(&[2500, 1024, 7], &[1000, 256, 0]), 2);
        assert_eq!(fit_count(&[2500, 1024, 7], &[0, 0, 0]), u64::MAX);
        assert!(fits(&[1, 1, 1], &[1, 1, 1]));
        assert!(!fits(&[1, 1, 1], &[1, 2, 1]));
        assert_eq!(share(&[1, 0, 5], &[4, 0, 0]), 0.25);
        assert_eq!(
            vec3(&Resources {
                cpus: f64::NAN,
                mem: 1,
                disk: 2
            }),
            [0, 1, 2]
        );
    }
}

//! The `[cost]` table: what the GPUs cost per hour and, optionally, what electricity costs, so that the
//! report can price a million tokens. Prices are facts about the rental, not about a measurement: they
//! change no settings hash, and a corrected price only needs `runner report`.
//!
//! ```toml
//! [cost]
//! gpu_hour = 2.49        # per GPU-hour …
//! # vm_hour = 27.20      # … or per VM-hour, with
//! # vm_gpus = 8          #     the number of GPUs the VM has
//! currency = "USD"
//! kwh = 0.12             # optional: electricity per kWh, priced on measured energy
//! ```

use serde::Deserialize;

use super::Validator;

pub const COST_KEYS: &[&str] = &["gpu_hour", "vm_hour", "vm_gpus", "currency", "kwh"];

#[derive(Debug, Deserialize, Default)]
pub struct RawCost {
    pub gpu_hour: Option<f64>,
    pub vm_hour: Option<f64>,
    pub vm_gpus: Option<u32>,
    pub currency: Option<String>,
    pub kwh: Option<f64>,
}

/// What the GPUs are paid by.
#[derive(Debug, Clone, PartialEq)]
pub enum Price {
    /// Per GPU and hour.
    GpuHour(f64),
    /// Per VM and hour; the VM has `gpus` GPUs, so one GPU costs `price / gpus`.
    VmHour { price: f64, gpus: u32 },
}

/// A validated `[cost]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub price: Price,
    /// An ISO 4217 code such as `USD` or `CNY`.
    pub currency: String,
    /// Electricity per kWh, in the same currency.
    pub kwh: Option<f64>,
}

impl Cost {
    /// What one GPU costs per hour.
    pub fn gpu_hour(&self) -> f64 {
        match self.price {
            Price::GpuHour(p) => p,
            Price::VmHour { price, gpus } => price / f64::from(gpus),
        }
    }
}

impl Validator<'_> {
    /// Validates `[cost]`: exactly one way to price the GPUs, positive finite numbers, a currency code.
    pub(super) fn cost(&mut self, raw: Option<RawCost>) -> Option<Cost> {
        let raw = raw?;
        let mut ok = true;
        let mut positive = |v: &mut Self, key: &str, value: Option<f64>| {
            if let Some(x) = value
                && !(x.is_finite() && x > 0.0)
            {
                v.error(
                    &["cost", key],
                    format!("{x} is not a positive price"),
                    Some(format!(
                        "write the price as a positive number, e.g. `{key} = 2.5`"
                    )),
                );
                ok = false;
            }
        };
        positive(self, "gpu_hour", raw.gpu_hour);
        positive(self, "vm_hour", raw.vm_hour);
        positive(self, "kwh", raw.kwh);
        let price = match (raw.gpu_hour, raw.vm_hour, raw.vm_gpus) {
            (Some(p), None, None) => Some(Price::GpuHour(p)),
            (None, Some(price), Some(gpus)) if gpus > 0 => Some(Price::VmHour { price, gpus }),
            (None, Some(_), Some(_)) => {
                self.error(
                    &["cost", "vm_gpus"],
                    "a VM has at least one GPU",
                    Some("write how many GPUs the VM has, e.g. `vm_gpus = 8`".into()),
                );
                None
            }
            (None, Some(_), None) => {
                self.error(
                    &["cost", "vm_hour"],
                    "`vm_hour` needs `vm_gpus` (the price is shared by the VM's GPUs)",
                    Some("add `vm_gpus = N`, the number of GPUs the VM has".into()),
                );
                None
            }
            (Some(_), Some(_), _) => {
                self.error(
                    &["cost", "vm_hour"],
                    "give either `gpu_hour` or `vm_hour`, not both",
                    Some("remove one of them".into()),
                );
                None
            }
            (Some(_), None, Some(_)) => {
                self.error(
                    &["cost", "vm_gpus"],
                    "`vm_gpus` belongs with `vm_hour`",
                    Some("remove `vm_gpus`, or price the VM with `vm_hour`".into()),
                );
                None
            }
            (None, None, _) => {
                self.error(
                    &["cost"],
                    "no price: `gpu_hour` or `vm_hour` is missing",
                    Some(
                        "add `gpu_hour = 2.5` (per GPU-hour) or `vm_hour = 20` with `vm_gpus = 8`"
                            .into(),
                    ),
                );
                None
            }
        };
        let currency = match raw.currency {
            Some(c) if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase()) => Some(c),
            Some(c) => {
                let upper = c.trim().to_ascii_uppercase();
                let fix = if upper.len() == 3 && upper.chars().all(|ch| ch.is_ascii_uppercase()) {
                    format!("write `currency = \"{upper}\"`")
                } else {
                    "write a three-letter currency code such as \"USD\" or \"CNY\"".into()
                };
                self.error(
                    &["cost", "currency"],
                    format!("`{c}` is not a currency code"),
                    Some(fix),
                );
                None
            }
            None => {
                self.error(
                    &["cost"],
                    "`currency` is missing",
                    Some(
                        "add `currency = \"USD\"` (or \"CNY\", …): prices are printed with it"
                            .into(),
                    ),
                );
                None
            }
        };
        Some(Cost {
            price: price?,
            currency: currency?,
            kwh: raw.kwh,
        })
        .filter(|_| ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_price_is_shared_by_its_gpus() {
        let c = Cost {
            price: Price::VmHour {
                price: 27.2,
                gpus: 8,
            },
            currency: "USD".into(),
            kwh: None,
        };
        assert!((c.gpu_hour() - 3.4).abs() < 1e-12);
    }
}

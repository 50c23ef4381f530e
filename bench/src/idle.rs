//! How the machine's CPUs wait when they have nothing to run. In a VM whose
//! guest halts an idle vCPU at once, every wake-up of that vCPU (a reply
//! on a socket, a disk completion) goes out to the hypervisor and back, and
//! a one-call-at-a-time loop pays it at each step. A reader comparing
//! per-call numbers across machines needs to know which kind ran them.

use serde::Serialize;

const DRIVER: &str = "/sys/devices/system/cpu/cpuidle/current_driver";
const HALT_POLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Idle {
    /// The cpuidle driver (`haltpoll` in a KVM guest that has it,
    /// `intel_idle`, `acpi_idle`...); `None` where the kernel has none.
    pub driver: Option<String>,
    /// How long the `haltpoll` driver lets an idle vCPU poll before it
    /// halts; `None` where that driver is not loaded.
    pub guest_halt_poll_ns: Option<u64>,
}

impl Idle {
    pub fn read() -> Idle {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Idle {
            driver: read(DRIVER),
            guest_halt_poll_ns: read(HALT_POLL_NS).and_then(|s| s.parse().ok()),
        }
    }

    /// True when an idle vCPU halts without polling first.
    pub fn halts_at_once(&self) -> bool {
        self.driver.as_deref() == Some("haltpoll") && self.guest_halt_poll_ns == Some(0)
    }

    /// The header's words for it.
    pub fn describe(&self) -> String {
        if self.halts_at_once() {
            return "haltpoll with guest_halt_poll_ns=0: an idle vCPU halts at once, and each wake-up \
                    of it goes through the hypervisor"
                .to_string();
        }
        match (self.driver.as_deref(), self.guest_halt_poll_ns) {
            (None, _) => "unknown (no cpuidle driver)".to_string(),
            (Some("haltpoll"), Some(ns)) => format!(
                "haltpoll: an idle vCPU polls up to {:.0} us before it halts",
                ns as f64 / 1e3
            ),
            (Some(driver), _) => driver.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Idle;

    fn idle(driver: Option<&str>, ns: Option<u64>) -> Idle {
        Idle {
            driver: driver.map(str::to_string),
            guest_halt_poll_ns: ns,
        }
    }

    #[test]
    fn only_haltpoll_without_polling_halts_at_once() {
        assert!(idle(Some("haltpoll"), Some(0)).halts_at_once());
        assert!(!idle(Some("haltpoll"), Some(200_000)).halts_at_once());
        assert!(!idle(Some("intel_idle"), None).halts_at_once());
        assert!(!idle(None, None).halts_at_once());
    }

    #[test]
    fn describes_the_polling_time() {
        assert_eq!(
            idle(Some("haltpoll"), Some(200_000)).describe(),
            "haltpoll: an idle vCPU polls up to 200 us before it halts"
        );
        assert_eq!(idle(Some("acpi_idle"), None).describe(), "acpi_idle");
    }

    #[test]
    fn reads_this_machine_without_failing() {
        let here = Idle::read();
        assert!(!here.describe().is_empty());
    }
}

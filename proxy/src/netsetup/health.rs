//! Per-address health from probe results, with hysteresis: one answer makes an address
//! healthy, `unhealthy_after` unanswered probes in a row make it unhealthy.

use std::net::IpAddr;

/// A change of an address's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Up(IpAddr),
    Down(IpAddr),
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    answering: bool,
    misses: u32,
}

#[derive(Debug)]
pub struct Health {
    addrs: Vec<IpAddr>,
    states: Vec<State>,
    unhealthy_after: u32,
}

impl Health {
    pub fn new(addrs: &[IpAddr], unhealthy_after: u32) -> Health {
        Health {
            addrs: addrs.to_vec(),
            states: vec![State::default(); addrs.len()],
            unhealthy_after: unhealthy_after.max(1),
        }
    }

    /// Records one probe of address `i`; returns the change it caused, if any.
    pub fn record(&mut self, i: usize, answered: bool) -> Option<Change> {
        let (ip, st) = (*self.addrs.get(i)?, self.states.get_mut(i)?);
        if answered {
            st.misses = 0;
            let was = std::mem::replace(&mut st.answering, true);
            return (!was).then_some(Change::Up(ip));
        }
        st.misses = st.misses.saturating_add(1);
        if st.answering && st.misses >= self.unhealthy_after {
            st.answering = false;
            return Some(Change::Down(ip));
        }
        None
    }

    /// The addresses the proxy answers on: those that get NOTRACK rules.
    pub fn answering(&self) -> Vec<IpAddr> {
        self.addrs
            .iter()
            .zip(&self.states)
            .filter(|(_, s)| s.answering)
            .map(|(a, _)| *a)
            .collect()
    }

    /// True once every address is known: answering, or unanswered `unhealthy_after`
    /// times in a row. Until then, rules a previous run left are kept.
    pub fn decided(&self) -> bool {
        self.states
            .iter()
            .all(|s| s.answering || s.misses >= self.unhealthy_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_answer_is_up_and_only_repeated_misses_are_down() {
        let a: IpAddr = "169.254.20.10".parse().expect("ip");
        let b: IpAddr = "fd00::10".parse().expect("ip");
        let mut h = Health::new(&[a, b], 3);
        assert!(!h.decided());
        assert_eq!(h.record(0, true), Some(Change::Up(a)));
        assert_eq!(h.record(0, true), None);
        assert_eq!(h.answering(), vec![a]);
        assert!(!h.decided(), "b is not known yet");
        for _ in 0..3 {
            assert_eq!(h.record(1, false), None, "never up, so never down");
        }
        assert!(h.decided());
        assert_eq!(h.record(0, false), None);
        assert_eq!(h.record(0, false), None);
        assert_eq!(h.record(0, true), None, "a miss streak broken by an answer");
        assert_eq!(h.record(0, false), None);
        assert_eq!(h.record(0, false), None);
        assert_eq!(h.record(0, false), Some(Change::Down(a)));
        assert!(h.answering().is_empty());
        assert_eq!(h.record(5, true), None, "unknown index");
    }
}

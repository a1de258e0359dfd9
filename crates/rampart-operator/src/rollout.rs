//! The rollout of one resource's generations, as a pure function: what was observed in,
//! the next state and what to do out. The controller observes (the proxies' ACK/NACK of the
//! config made from a generation, health checks, error rates), calls [`step`], carries out
//! the actions (apply, revert, record, events, conditions) and requeues.
//!
//! ```text
//!             new generation
//!   (any) ───────────────────► Provisioning ──(ACKed, healthy for the bake time)──► Running
//!                                   │
//!                                   │ NACKed / health failing / error rate past the threshold
//!                                   ▼
//!                                 Failed ──(a known good generation)──► RolledBack
//!                                   (stays Failed when there is none to go back to)
//! ```
//!
//! It is level-triggered: every reconcile passes the whole observation, so a missed event
//! or a restarted operator lands in the same place. The last known good generation lives in
//! the resource's status, so it survives restarts too.

use std::time::Duration;

/// Where a resource's rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its config is applied; waiting for the proxies and the bake time.
    Provisioning,
    /// Applied, accepted and healthy for the bake time: the new last known good.
    Running,
    /// Refused or unhealthy, with nothing known good to go back to.
    Failed,
    /// Refused or unhealthy; the last known good generation is applied again.
    RolledBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "Provisioning",
            Self::Running => "Running",
            Self::Failed => "Failed",
            Self::RolledBack => "RolledBack",
        }
    }
}

/// What the status keeps between reconciles.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub phase: Phase,
    /// The generation this rollout is about.
    pub generation: i64,
    /// When its config was applied (seconds on the controller's clock).
    pub applied_at: u64,
    /// The last generation that reached Running.
    pub last_good: Option<i64>,
    /// Why it failed, when it did.
    pub reason: Option<String>,
}

impl Rollout {
    /// A resource seen for the first time: nothing applied yet, nothing known good (an inert
    /// phase: the first generation observed starts Provisioning).
    pub fn new() -> Self {
        Self {
            phase: Phase::Failed,
            generation: 0,
            applied_at: 0,
            last_good: None,
            reason: None,
        }
    }
}

impl Default for Rollout {
    fn default() -> Self {
        Self::new()
    }
}

/// What the proxies said of the config made from the generation being rolled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigStatus {
    /// Not every proxy has answered yet.
    Pending,
    /// Every proxy applied it.
    Acked,
    /// A proxy refused it, with its reason.
    Nacked(String),
}

/// One reconcile's view of the world.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// `metadata.generation` of the resource now.
    pub generation: i64,
    pub config: ConfigStatus,
    /// A failing health check, if any (`"endpoint 10.0.0.7:80 failed 3 checks"`).
    pub health: Option<String>,
    /// The share of 5xx answers on the resource's routes since it was applied, if known.
    pub error_rate: Option<f64>,
    /// Seconds on the controller's clock.
    pub now: u64,
}

/// How a rollout is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// How long an applied generation must stay accepted and healthy to be known good.
    pub bake: Duration,
    /// The error rate past which a generation in its bake time fails.
    pub max_error_rate: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            bake: Duration::from_secs(60),
            max_error_rate: 0.05,
        }
    }
}

/// What the controller must do after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write the config made from this generation (to the store).
    Apply(i64),
    /// Write the config of this earlier generation again.
    Revert(i64),
    /// A Kubernetes Event: `Normal` or `Warning`, a reason, a message.
    Event {
        warning: bool,
        reason: &'static str,
        message: String,
    },
    /// Look again after this long (the rest of the bake time).
    RequeueAfter(Duration),
}

/// The next state and what to do, from the state kept and what is observed now.
pub fn step(state: &Rollout, obs: &Observation, policy: &Policy) -> (Rollout, Vec<Action>) {
    let mut next = state.clone();
    let mut actions = Vec::new();
    if obs.generation > state.generation {
        // A new generation restarts the cycle, whatever the last one came to.
        next = Rollout {
            phase: Phase::Provisioning,
            generation: obs.generation,
            applied_at: obs.now,
            last_good: state.last_good,
            reason: None,
        };
        actions.push(Action::Apply(obs.generation));
        actions.push(event(
            false,
            "Provisioning",
            format!("applying generation {}", obs.generation),
        ));
        actions.push(Action::RequeueAfter(policy.bake));
        return (next, actions);
    }
    if state.phase != Phase::Provisioning {
        // Running, Failed and RolledBack hold until the spec changes.
        return (next, actions);
    }
    if let Some(why) = failure(obs, policy) {
        fail(&mut next, why, &mut actions);
        return (next, actions);
    }
    let baked = obs.now.saturating_sub(state.applied_at);
    let bake = policy.bake.as_secs();
    if obs.config == ConfigStatus::Acked && baked >= bake {
        next.phase = Phase::Running;
        next.last_good = Some(state.generation);
        actions.push(event(
            false,
            "Running",
            format!(
                "generation {} accepted by every proxy and healthy for {bake} s",
                state.generation
            ),
        ));
    } else {
        let left = bake.saturating_sub(baked).max(1);
        actions.push(Action::RequeueAfter(Duration::from_secs(left)));
    }
    (next, actions)
}

/// Why the generation in its bake time fails, if it does.
fn failure(obs: &Observation, policy: &Policy) -> Option<String> {
    if let ConfigStatus::Nacked(why) = &obs.config {
        return Some(format!("the proxies refused the config: {why}"));
    }
    if let Some(why) = &obs.health {
        return Some(format!("health checks fail: {why}"));
    }
    match obs.error_rate {
        Some(r) if r > policy.max_error_rate => Some(format!(
            "error rate {:.1}% is past the {:.1}% allowed",
            r * 100.0,
            policy.max_error_rate * 100.0
        )),
        _ => None,
    }
}

fn fail(next: &mut Rollout, why: String, actions: &mut Vec<Action>) {
    actions.push(event(
        true,
        "Failed",
        format!("generation {}: {why}", next.generation),
    ));
    next.reason = Some(why);
    match next.last_good {
        Some(good) => {
            next.phase = Phase::RolledBack;
            actions.push(Action::Revert(good));
            actions.push(event(
                true,
                "RolledBack",
                format!(
                    "generation {} reverted to generation {good}, the last known good",
                    next.generation
                ),
            ));
        }
        None => {
            next.phase = Phase::Failed;
            actions.push(event(
                true,
                "NoKnownGood",
                "no earlier generation reached Running: nothing to revert to".into(),
            ));
        }
    }
}

fn event(warning: bool, reason: &'static str, message: String) -> Action {
    Action::Event {
        warning,
        reason,
        message,
    }
}

/// The Gateway API `Programmed` condition for a rollout: `(status, reason, message)`.
pub fn programmed(r: &Rollout) -> (&'static str, &'static str, String) {
    match r.phase {
        Phase::Provisioning => (
            "Unknown",
            "Pending",
            format!("generation {} is baking", r.generation),
        ),
        Phase::Running => (
            "True",
            "Programmed",
            format!("generation {} is programmed", r.generation),
        ),
        Phase::Failed => ("False", "Invalid", r.reason.clone().unwrap_or_default()),
        Phase::RolledBack => (
            "False",
            "RolledBack",
            format!(
                "{}; serving generation {}",
                r.reason.clone().unwrap_or_default(),
                r.last_good.unwrap_or_default()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        bake: Duration::from_secs(60),
        max_error_rate: 0.05,
    };

    fn obs(generation: i64, config: ConfigStatus, now: u64) -> Observation {
        Observation {
            generation,
            config,
            health: None,
            error_rate: None,
            now,
        }
    }

    fn reasons(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    /// Generation 1 rolled out to Running.
    fn running_one() -> Rollout {
        let (s, _) = step(&Rollout::new(), &obs(1, ConfigStatus::Pending, 0), &POLICY);
        let (s, _) = step(&s, &obs(1, ConfigStatus::Acked, 60), &POLICY);
        assert_eq!(s.phase, Phase::Running);
        s
    }

    #[test]
    fn a_good_rollout_bakes_then_runs_and_becomes_known_good() {
        let (s, a) = step(
            &Rollout::new(),
            &obs(1, ConfigStatus::Pending, 100),
            &POLICY,
        );
        assert_eq!(s.phase, Phase::Provisioning);
        assert_eq!(a[0], Action::Apply(1));
        assert_eq!(reasons(&a), ["Provisioning"]);
        // Accepted, but the bake time is not over: wait the rest of it.
        let (s, a) = step(&s, &obs(1, ConfigStatus::Acked, 130), &POLICY);
        assert_eq!(s.phase, Phase::Provisioning);
        assert_eq!(a, [Action::RequeueAfter(Duration::from_secs(30))]);
        // Not yet answered by every proxy when the bake time is over: still waiting.
        let (s2, _) = step(&s, &obs(1, ConfigStatus::Pending, 170), &POLICY);
        assert_eq!(s2.phase, Phase::Provisioning);
        let (s, a) = step(&s, &obs(1, ConfigStatus::Acked, 160), &POLICY);
        assert_eq!(s.phase, Phase::Running);
        assert_eq!(s.last_good, Some(1));
        assert_eq!(reasons(&a), ["Running"]);
        assert_eq!(programmed(&s).0, "True");
        // Nothing moves a running generation but a new one.
        let (same, a) = step(
            &s,
            &obs(1, ConfigStatus::Nacked("late".into()), 999),
            &POLICY,
        );
        assert_eq!((same, a), (s, vec![]));
    }

    #[test]
    fn a_nacked_generation_is_reverted_to_the_last_known_good() {
        let s = running_one();
        let (s, _) = step(&s, &obs(2, ConfigStatus::Pending, 200), &POLICY);
        let (s, a) = step(
            &s,
            &obs(
                2,
                ConfigStatus::Nacked("no cluster named \"x\"".into()),
                205,
            ),
            &POLICY,
        );
        assert_eq!(s.phase, Phase::RolledBack);
        assert!(a.contains(&Action::Revert(1)), "{a:?}");
        assert_eq!(reasons(&a), ["Failed", "RolledBack"]);
        assert!(s.reason.as_deref().unwrap().contains("no cluster named"));
        assert_eq!(s.last_good, Some(1), "the known good stays known good");
        let (status, reason, message) = programmed(&s);
        assert_eq!((status, reason), ("False", "RolledBack"));
        assert!(message.contains("serving generation 1"), "{message}");
        // It holds until the spec changes; the next generation starts over.
        assert_eq!(
            step(&s, &obs(2, ConfigStatus::Acked, 900), &POLICY).1,
            vec![]
        );
        let (s, a) = step(&s, &obs(3, ConfigStatus::Pending, 910), &POLICY);
        assert_eq!((s.phase, s.reason.clone()), (Phase::Provisioning, None));
        assert_eq!(a[0], Action::Apply(3));
    }

    #[test]
    fn health_and_error_rate_regressions_within_the_bake_time_revert() {
        let base = running_one();
        let (s, _) = step(&base, &obs(2, ConfigStatus::Acked, 200), &POLICY);
        let mut sick = obs(2, ConfigStatus::Acked, 230);
        sick.health = Some("endpoint 10.0.0.7:80 failed 3 checks".into());
        let (r, a) = step(&s, &sick, &POLICY);
        assert_eq!(r.phase, Phase::RolledBack);
        assert!(a.contains(&Action::Revert(1)));
        let mut erring = obs(2, ConfigStatus::Acked, 230);
        erring.error_rate = Some(0.2);
        let (r, _) = step(&s, &erring, &POLICY);
        assert_eq!(r.phase, Phase::RolledBack);
        assert!(r.reason.unwrap().contains("20.0%"));
        // At the threshold is still fine.
        erring.error_rate = Some(0.05);
        assert_eq!(step(&s, &erring, &POLICY).0.phase, Phase::Provisioning);
    }

    #[test]
    fn a_first_generation_that_fails_has_nothing_to_revert_to() {
        let (s, _) = step(&Rollout::new(), &obs(1, ConfigStatus::Pending, 0), &POLICY);
        let (s, a) = step(&s, &obs(1, ConfigStatus::Nacked("bad".into()), 1), &POLICY);
        assert_eq!(s.phase, Phase::Failed);
        assert!(!a.iter().any(|x| matches!(x, Action::Revert(_))));
        assert_eq!(reasons(&a), ["Failed", "NoKnownGood"]);
        assert_eq!(programmed(&s).1, "Invalid");
        // A fixed spec rolls out normally.
        let (s, _) = step(&s, &obs(2, ConfigStatus::Acked, 10), &POLICY);
        let (s, _) = step(&s, &obs(2, ConfigStatus::Acked, 70), &POLICY);
        assert_eq!((s.phase, s.last_good), (Phase::Running, Some(2)));
    }

    #[test]
    fn a_new_generation_during_a_bake_replaces_it() {
        let s = running_one();
        let (s, _) = step(&s, &obs(2, ConfigStatus::Pending, 100), &POLICY);
        let (s, a) = step(&s, &obs(3, ConfigStatus::Pending, 110), &POLICY);
        assert_eq!(
            (s.phase, s.generation, s.applied_at),
            (Phase::Provisioning, 3, 110)
        );
        assert_eq!(a[0], Action::Apply(3));
        // The bake time counts from generation 3's apply.
        let (s, _) = step(&s, &obs(3, ConfigStatus::Acked, 165), &POLICY);
        assert_eq!(s.phase, Phase::Provisioning);
        let (s, _) = step(&s, &obs(3, ConfigStatus::Acked, 170), &POLICY);
        assert_eq!((s.phase, s.last_good), (Phase::Running, Some(3)));
    }
}

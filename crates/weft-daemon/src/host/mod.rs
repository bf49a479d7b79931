//! The host around the router: wanted state (firewall rules, the bridge being up) computed
//! here and kept true by a reconcile loop, whatever other programs do to the host meanwhile.
//!
//! [`firewall`] computes weft's rule set as a pure function; [`Firewall`] applies it through a
//! [`FirewallBackend`] (the iptables tools in `weft-linux`, or a recording fake in tests) and
//! notices when the rules it applied are gone. [`FirewallTask`] runs that every few seconds and
//! whenever the exposed addresses change, so a flush (`iptables -F`, a firewalld reload,
//! Docker rewriting FORWARD) is repaired within [`CHECK_INTERVAL`], with a log line saying so.

pub mod firewall;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use weft_core::fastdp::FastDpPlan;
use weft_linux::netlink::{LinkConfig, Netlink};

use self::firewall::{FirewallSpec, VxlanSources};

/// How often the rules and the bridge are checked when nothing asked for a change.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host firewall: {0}")]
    Firewall(String),
    #[error(transparent)]
    Linux(#[from] weft_linux::Error),
    #[error("the firewall task has stopped")]
    Stopped,
}

/// A sync request: answered once the rules match the bridge, or with why not.
type SyncReply = oneshot::Sender<Result<(), HostError>>;

/// Reads and writes whole tables in the host's firewall.
pub trait FirewallBackend: Send + Sync + 'static {
    /// The table as `iptables-save -t TABLE` prints it.
    fn save(&self, table: &str) -> Result<String, HostError>;
    /// Applies `iptables-restore --noflush` input atomically.
    fn restore(&self, input: &str) -> Result<(), HostError>;
}

impl FirewallBackend for weft_linux::iptables::Iptables {
    fn save(&self, table: &str) -> Result<String, HostError> {
        Ok(weft_linux::iptables::Iptables::save(self, table)?)
    }
    fn restore(&self, input: &str) -> Result<(), HostError> {
        Ok(weft_linux::iptables::Iptables::restore(self, input)?)
    }
}

/// What a check found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// The rules were as applied, and the spec unchanged.
    Intact,
    /// The spec changed (an expose, hide, docker0 appearing): the rules were rewritten.
    Updated,
    /// Rules weft had applied were missing or changed: they were put back. The lines that
    /// were missing, for the log.
    Repaired(Vec<String>),
}

/// weft's rules in one backend: what was applied, and what it looked like right after.
pub struct Firewall<B: FirewallBackend> {
    backend: B,
    applied: Option<FirewallSpec>,
    /// Per table, weft's lines as the backend printed them right after applying (the backend's
    /// own spelling, so comparing needs no knowledge of how it normalises rules).
    baseline: Vec<Vec<String>>,
}

impl<B: FirewallBackend> Firewall<B> {
    pub fn new(backend: B) -> Self {
        Firewall {
            backend,
            applied: None,
            baseline: Vec::new(),
        }
    }

    /// Makes the host hold exactly `spec`'s rules (weft's part of them).
    pub fn apply(&mut self, spec: &FirewallSpec) -> Result<(), HostError> {
        let mut baseline = Vec::new();
        for want in firewall::rules(spec) {
            let current = self.backend.save(want.table)?;
            self.backend
                .restore(&firewall::apply_text(&want, &current))?;
            baseline.push(firewall::ours(&self.backend.save(want.table)?));
        }
        self.applied = Some(spec.clone());
        self.baseline = baseline;
        Ok(())
    }

    /// Re-applies when `spec` differs from what was applied or someone changed weft's rules.
    pub fn check(&mut self, spec: &FirewallSpec) -> Result<Checked, HostError> {
        if self.applied.as_ref() != Some(spec) {
            self.apply(spec)?;
            return Ok(Checked::Updated);
        }
        let mut missing = Vec::new();
        for (want, base) in firewall::rules(spec).iter().zip(&self.baseline) {
            let now = firewall::ours(&self.backend.save(want.table)?);
            if &now != base {
                missing.extend(
                    base.iter()
                        .filter(|l| !now.contains(l))
                        .map(|l| format!("{}: {l}", want.table)),
                );
                if missing.is_empty() {
                    missing.push(format!(
                        "{}: weft's rules were reordered or added to",
                        want.table
                    ));
                }
            }
        }
        if missing.is_empty() {
            return Ok(Checked::Intact);
        }
        self.apply(spec)?;
        Ok(Checked::Repaired(missing))
    }
}

/// Removes every rule and chain of weft's (`weft reset`); returns the tables it changed.
pub fn remove_rules(backend: &dyn FirewallBackend) -> Result<Vec<String>, HostError> {
    let mut changed = Vec::new();
    for table in ["filter", "nat"] {
        let current = backend.save(table)?;
        if let Some(text) = firewall::remove_text(table, &current) {
            backend.restore(&text)?;
            changed.push(table.to_string());
        }
    }
    Ok(changed)
}

/// What the rules depend on that does not change while the router runs.
#[derive(Clone, Debug)]
pub struct FixedSpec {
    pub bridge: String,
    pub port: u16,
    pub vxlan_port: u16,
    pub local_only: Vec<SocketAddr>,
    pub dns_port: Option<u16>,
}

/// The running task's handle: ask for an immediate reconcile (after an expose or hide) and
/// choose per subnet whether exposing it masquerades.
#[derive(Clone)]
pub struct FirewallHandle {
    tx: mpsc::Sender<SyncReply>,
    no_masquerade: Arc<Mutex<BTreeSet<Ipv4Net>>>,
}

impl FirewallHandle {
    /// A handle with no firewall task behind it, for a router that leaves the host firewall
    /// alone (a router run in-process by tests against a modelled host): every sync succeeds.
    pub fn inert() -> FirewallHandle {
        let (tx, mut rx) = mpsc::channel::<SyncReply>(1);
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send(Ok(()));
            }
        });
        FirewallHandle {
            tx,
            no_masquerade: Default::default(),
        }
    }

    /// Reconciles now and waits for it: when this returns Ok, the rules match the bridge.
    pub async fn sync(&self) -> Result<(), HostError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(tx).await.is_err() {
            return Err(HostError::Stopped);
        }
        rx.await.unwrap_or(Err(HostError::Stopped))
    }

    /// Whether traffic of exposed subnet `cidr` is masqueraded (Weave's `--without-masquerade`).
    pub fn set_masquerade(&self, cidr: Ipv4Net, masquerade: bool) {
        let mut set = self.no_masquerade.lock().expect("not poisoned");
        if masquerade {
            set.remove(&cidr.trunc());
        } else {
            set.insert(cidr.trunc());
        }
    }
}

pub struct FirewallTask {
    /// `None` only while a check runs on a blocking thread.
    firewall: Option<Firewall<weft_linux::iptables::Iptables>>,
    fixed: FixedSpec,
    nl: Netlink,
    bridge_index: u32,
    physdev: bool,
    requests: mpsc::Receiver<SyncReply>,
    no_masquerade: Arc<Mutex<BTreeSet<Ipv4Net>>>,
    /// The router's ports last seen with hairpin mode on.
    hairpin: BTreeSet<String>,
    /// The fast path's plan, when it runs: its neighbours may send VXLAN.
    fastdp: Option<watch::Receiver<Arc<FastDpPlan>>>,
    vxlan_from: Option<VxlanSources>,
    /// The address VXLAN is bound to (`--host`).
    vxlan_local: Option<Ipv4Addr>,
}

impl FirewallTask {
    /// Finds the iptables backend and applies the rules once, so a launch on a host where
    /// they cannot be installed fails with the reason instead of leaving containers cut off.
    pub async fn start(
        nl: Netlink,
        bridge_index: u32,
        fixed: FixedSpec,
    ) -> Result<(Self, FirewallHandle), HostError> {
        let backend = tokio::task::spawn_blocking(weft_linux::iptables::Iptables::detect)
            .await
            .map_err(|e| HostError::Firewall(e.to_string()))??;
        info!(backend = backend.backend(), "host firewall: using iptables");
        let (tx, rx) = mpsc::channel(16);
        let no_masquerade = Arc::new(Mutex::new(BTreeSet::new()));
        let mut task = FirewallTask {
            firewall: Some(Firewall::new(backend)),
            fixed,
            nl,
            bridge_index,
            physdev: true,
            requests: rx,
            no_masquerade: no_masquerade.clone(),
            hairpin: BTreeSet::new(),
            fastdp: None,
            vxlan_from: None,
            vxlan_local: None,
        };
        task.reconcile().await?;
        Ok((task, FirewallHandle { tx, no_masquerade }))
    }

    /// The fast path runs, bound to `local` if set: from now on only the plan's neighbours
    /// may send to the VXLAN port.
    pub fn with_fastdp(
        mut self,
        plan: watch::Receiver<Arc<FastDpPlan>>,
        local: Option<Ipv4Addr>,
    ) -> Self {
        self.vxlan_local = local;
        self.vxlan_from = Some(vxlan_sources(&plan.borrow(), local));
        self.fastdp = Some(plan);
        self
    }

    async fn spec(&self) -> Result<FirewallSpec, HostError> {
        let docker_bridge = self
            .nl
            .link_by_name("docker0")
            .await?
            .filter(|l| l.name != self.fixed.bridge)
            .map(|l| l.name);
        let exposed: BTreeSet<Ipv4Net> = self
            .nl
            .addresses(Some(self.bridge_index))
            .await?
            .into_iter()
            .filter_map(|(_, n)| match n {
                IpNet::V4(v4) => Some(v4.trunc()),
                IpNet::V6(_) => None,
            })
            .collect();
        let no_masquerade = self.no_masquerade.lock().expect("not poisoned").clone();
        Ok(FirewallSpec {
            bridge: self.fixed.bridge.clone(),
            docker_bridge,
            port: self.fixed.port,
            vxlan_port: self.fixed.vxlan_port,
            vxlan_from: self.vxlan_from.clone(),
            local_only: self.fixed.local_only.clone(),
            dns_port: self.fixed.dns_port,
            no_masquerade: no_masquerade.intersection(&exposed).copied().collect(),
            exposed,
            physdev: self.physdev,
        })
    }

    /// One round: the bridge up, the rules in place, forwarding on if anything is exposed.
    async fn reconcile(&mut self) -> Result<(), HostError> {
        self.heal_bridge().await;
        self.detect_hairpin();
        let spec = self.spec().await?;
        if !spec.exposed.is_empty() {
            enable_forwarding();
        }
        let result = self.check_blocking(spec.clone()).await;
        let result = match result {
            // Kernels without the physdev match: accept the bridge whole rather than not at all.
            Err(e) if self.physdev && e.to_string().contains("physdev") => {
                warn!(
                    "host firewall: the physdev match is unavailable ({e}); routed traffic between overlay subnets is not blocked"
                );
                self.physdev = false;
                let spec = FirewallSpec {
                    physdev: false,
                    ..spec
                };
                self.check_blocking(spec).await
            }
            r => r,
        }?;
        match result {
            Checked::Intact => {}
            Checked::Updated => info!(
                exposed = ?self.firewall.as_ref().and_then(|f| f.applied.as_ref()).map(|s| &s.exposed),
                "host firewall: weft's forwarding and NAT rules are in place"
            ),
            Checked::Repaired(missing) => warn!(
                "host firewall: {} of weft's rules had been removed or changed (a flush, a firewall reload, Docker restarting?); restored them: {}",
                missing.len(),
                missing.join("; ")
            ),
        }
        Ok(())
    }

    async fn check_blocking(&mut self, spec: FirewallSpec) -> Result<Checked, HostError> {
        // iptables runs as child processes: keep them off the runtime's worker threads.
        let mut fw = self
            .firewall
            .take()
            .expect("only taken for the duration of a check");
        let (fw, result) = tokio::task::spawn_blocking(move || {
            let r = fw.check(&spec);
            (fw, r)
        })
        .await
        .map_err(|e| HostError::Firewall(format!("the firewall check panicked: {e}")))?;
        self.firewall = Some(fw);
        result
    }

    /// As Weave did for its own bridge port: hairpin mode on the router's ports (the TAP,
    /// the VXLAN device) reflects frames back into the overlay, duplicating them. weft never
    /// sets it there, so something else did: said once each time it appears.
    fn detect_hairpin(&mut self) {
        for port in [
            format!("{}-tap", self.fixed.bridge),
            crate::fastdp::vxlan_name(&self.fixed.bridge),
        ] {
            let on = weft_linux::sysctl::hairpin_enabled(&port);
            if on && self.hairpin.insert(port.clone()) {
                tracing::error!(
                    "Hairpin mode enabled on {port:?}: this may cause connectivity issues (frames come back to the overlay twice); it may have been enabled by other software on this machine"
                );
            } else if !on && self.hairpin.remove(&port) {
                info!("hairpin mode is off again on {port:?}");
            }
        }
    }

    async fn heal_bridge(&self) {
        if let Ok(Some(l)) = self.nl.link_by_name(&self.fixed.bridge).await
            && !l.up
        {
            let up = LinkConfig {
                up: true,
                ..Default::default()
            };
            match self.nl.configure(l.index, up).await {
                Ok(()) => {
                    warn!(bridge = %l.name, "the bridge had been set down; brought it back up")
                }
                Err(e) => warn!(bridge = %l.name, "the bridge is down and cannot be set up: {e}"),
            }
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.reconcile().await {
                        warn!("host firewall: {e}");
                    }
                }
                Some(reply) = self.requests.recv() => {
                    let _ = reply.send(self.reconcile().await);
                }
                Ok(()) = changed(&mut self.fastdp) => {
                    let now = self.fastdp.as_ref().map(|p| vxlan_sources(&p.borrow(), self.vxlan_local));
                    if now != self.vxlan_from {
                        self.vxlan_from = now;
                        if let Err(e) = self.reconcile().await {
                            warn!("host firewall: {e}");
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Waits for the plan to change; never, without a fast path.
async fn changed(
    plan: &mut Option<watch::Receiver<Arc<FastDpPlan>>>,
) -> Result<(), watch::error::RecvError> {
    match plan {
        Some(p) => p.changed().await,
        None => std::future::pending().await,
    }
}

/// The addresses VXLAN may come from: every neighbour we exchange heartbeats with or send to
/// by VXLAN (a lingering fast neighbour included).
fn vxlan_sources(plan: &FastDpPlan, local: Option<Ipv4Addr>) -> VxlanSources {
    VxlanSources {
        neighbours: plan
            .heartbeat
            .values()
            .chain(plan.fast.values())
            .copied()
            .collect(),
        local,
    }
}

/// Exposed subnets route through this host: containers and pods reach beyond it only if the
/// host forwards IPv4 (Docker turns it on; a host without Docker may not have).
fn enable_forwarding() {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "0") {
        match std::fs::write(PATH, "1") {
            Ok(()) => info!(
                "enabled IPv4 forwarding (net.ipv4.ip_forward=1) so exposed subnets reach beyond this host"
            ),
            Err(e) => warn!("cannot enable IPv4 forwarding for the exposed subnets: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that keeps one text per table and records what was restored; `restore`
    /// appends weft's declared lines the way a real backend would print them.
    #[derive(Default)]
    struct Fake {
        tables: Mutex<std::collections::BTreeMap<String, String>>,
        restored: Mutex<Vec<String>>,
    }

    impl FirewallBackend for Arc<Fake> {
        fn save(&self, table: &str) -> Result<String, HostError> {
            Ok(self
                .tables
                .lock()
                .unwrap()
                .get(table)
                .cloned()
                .unwrap_or_default())
        }
        fn restore(&self, input: &str) -> Result<(), HostError> {
            self.restored.lock().unwrap().push(input.to_string());
            let mut lines = input.lines();
            let table = lines.next().unwrap().trim_start_matches('*').to_string();
            let mut out: Vec<String> = Vec::new();
            for l in lines {
                if let Some(rest) = l.strip_prefix("-I ") {
                    let mut w = rest.splitn(3, ' ');
                    let (chain, _pos, rule) = (w.next().unwrap(), w.next(), w.next().unwrap());
                    out.push(format!("-A {chain} {rule}"));
                } else if l.starts_with(':') || l.starts_with("-A ") {
                    out.push(l.to_string());
                }
            }
            // Keep jumps that were there already (a real restore --noflush leaves them).
            let mut tables = self.tables.lock().unwrap();
            let old = tables.get(&table).cloned().unwrap_or_default();
            let kept = old
                .lines()
                .filter(|l| l.starts_with("-A ") && !l.starts_with("-A WEFT"));
            let text: Vec<String> = kept.map(str::to_string).chain(out).collect();
            tables.insert(table, text.join("\n"));
            Ok(())
        }
    }

    fn spec() -> FirewallSpec {
        FirewallSpec {
            bridge: "weft".into(),
            docker_bridge: None,
            port: 6783,
            vxlan_port: 6784,
            vxlan_from: None,
            local_only: vec![],
            dns_port: None,
            exposed: BTreeSet::new(),
            no_masquerade: BTreeSet::new(),
            physdev: true,
        }
    }

    #[test]
    fn intact_rules_are_left_alone() {
        let fake = Arc::new(Fake::default());
        let mut fw = Firewall::new(fake.clone());
        fw.apply(&spec()).unwrap();
        let n = fake.restored.lock().unwrap().len();
        assert_eq!(n, 2, "one restore per table");
        assert_eq!(fw.check(&spec()).unwrap(), Checked::Intact);
        assert_eq!(fake.restored.lock().unwrap().len(), n);
    }

    #[test]
    fn a_flushed_table_is_repaired_and_says_what_was_missing() {
        let fake = Arc::new(Fake::default());
        let mut fw = Firewall::new(fake.clone());
        fw.apply(&spec()).unwrap();
        fake.tables
            .lock()
            .unwrap()
            .insert("filter".into(), String::new());
        match fw.check(&spec()).unwrap() {
            Checked::Repaired(missing) => {
                assert!(missing.contains(&"filter: -A FORWARD -j WEFT-FORWARD".to_string()));
            }
            other => panic!("expected a repair, got {other:?}"),
        }
        assert_eq!(fw.check(&spec()).unwrap(), Checked::Intact);
    }

    #[test]
    fn a_changed_spec_rewrites_the_rules() {
        let fake = Arc::new(Fake::default());
        let mut fw = Firewall::new(fake.clone());
        fw.apply(&spec()).unwrap();
        let mut exposed = spec();
        exposed.exposed.insert("10.32.0.0/12".parse().unwrap());
        assert_eq!(fw.check(&exposed).unwrap(), Checked::Updated);
        let nat = fake.save("nat").unwrap();
        assert!(nat.contains("-A WEFT -s 10.32.0.0/12 ! -d 10.32.0.0/12 -j MASQUERADE"));
        // The jump was there already: not inserted twice.
        assert_eq!(nat.matches("-A POSTROUTING -j WEFT").count(), 1);
    }

    #[test]
    fn removal_touches_only_weft() {
        let fake = Arc::new(Fake::default());
        fake.tables.lock().unwrap().insert(
            "filter".into(),
            ":DOCKER - [0:0]\n-A FORWARD -j DOCKER\n:WEFT-INPUT - [0:0]\n-A INPUT -j WEFT-INPUT"
                .into(),
        );
        let changed = remove_rules(&fake).unwrap();
        assert_eq!(changed, ["filter"]);
        let text = &fake.restored.lock().unwrap()[0];
        assert!(text.contains("-D INPUT -j WEFT-INPUT") && text.contains("-X WEFT-INPUT"));
        assert!(!text.contains("DOCKER"));
    }
}

//! The Docker Engine's container events, followed: proxy-made containers started without the
//! proxy are attached, containers that die are detached at once, removed ones release their
//! addresses.
//!
//! Containers made through the proxy carry `/w/w` (weft-wait) as their entrypoint, so they are
//! recognised wherever they are started from: through the proxy (which answers the start only
//! once the container is attached), by `docker start` on the engine's own socket or a restart
//! policy (this watcher attaches them), or before a router restart (attached again at
//! start-up). A container whose process dies is detached at once (its `die` event), its
//! names removed; the reaper would notice within a second anyway.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::EventsOptions;
use futures::StreamExt;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::engine::Engine;
use crate::service::Service;

/// Follows the engine's container events until shutdown, reconnecting with backoff. Attaches
/// running containers first (after a router restart), and again after each reconnection.
pub async fn watch_events(
    service: Service,
    engine: Arc<Engine>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        service.attach_running().await;
        let opts = EventsOptions {
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "event".to_string(),
                    vec![
                        "start".to_string(),
                        "die".to_string(),
                        "destroy".to_string(),
                    ],
                ),
            ])),
            ..Default::default()
        };
        let mut events = engine.client.events(Some(opts));
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        delay = Duration::from_secs(1);
                        let id = ev.actor.and_then(|a| a.id).unwrap_or_default();
                        match ev.action.as_deref() {
                            Some("start") => {
                                engine.started(&id).await;
                                let service = service.clone();
                                tokio::spawn(async move {
                                    if let Err(e) = service.ensure_attached(&id).await {
                                        warn!(container = %id, "attaching the started container failed: {e}");
                                    }
                                    service.register_plugin_names(&id).await;
                                });
                            }
                            Some("destroy") => {
                                debug!(container = %id, "container removed");
                                service.container_destroyed(&id).await;
                            }
                            Some("die") => {
                                debug!(container = %id, "container died");
                                let gone = service.attacher.reap().await;
                                service.release_gone(gone).await;
                                // Names of a container on a plugin network (no-op otherwise).
                                service.unregister(&id, None).await;
                            }
                            _ => {}
                        }
                    }
                    Some(Err(e)) => {
                        warn!("Docker events: {e}; reconnecting");
                        break;
                    }
                    None => break,
                },
                _ = shutdown.changed() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

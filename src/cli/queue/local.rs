//! `sluice queue` on the spool itself, when no server runs. It builds the
//! same [`Context`] the server has around the queue it opened, so every
//! action goes through the same code (`admin::ops`) as the API. The spool is
//! opened with [`Queue::open_admin`], which reads no record at open, so a
//! per-message command costs milliseconds whatever the queue's size.

use std::io::{self, Write};
use std::sync::Arc;

use sluice_queue::{Queue, QueueId, QueueOptions};

use super::Access;
use crate::admin::bulk::{self, Action};
use crate::admin::content;
use crate::admin::error::AdminError;
use crate::admin::ops;
use crate::admin::summary::{self, Summary};
use crate::admin::suspensions::{self, SuspensionList, SuspensionView};
use crate::admin::view::{JsonArrayWriter, ListFilter, MessageView};
use crate::config::Config;
use crate::context::Context;

/// The spool opened by this process (or none: a spool that does not exist
/// is an empty queue, and is not created by looking at it).
pub struct Local {
    runtime: tokio::runtime::Runtime,
    ctx: Option<Context>,
    /// For creating the spool when a command needs one (`queue suspend`).
    config: Config,
}

/// Why the spool could not be opened.
pub enum OpenError {
    /// Another process holds it (a server whose API did not answer).
    Locked,
    /// Anything else.
    Other(anyhow::Error),
}

impl Local {
    /// Opens the spool of `config`.
    pub fn open(config: &Config) -> Result<Local, OpenError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| OpenError::Other(error.into()))?;
        let path = config.spool.path.clone();
        if !path.exists() {
            return Ok(Local {
                runtime,
                ctx: None,
                config: config.clone(),
            });
        }
        let options = QueueOptions {
            cache_capacity: config.spool.cache_capacity,
        };
        let queue = runtime.block_on(async { Queue::open_admin(&path, options) });
        let queue = match queue {
            Ok(queue) => queue,
            Err(sluice_queue::QueueError::Locked { .. }) => return Err(OpenError::Locked),
            Err(error) => return Err(OpenError::Other(error.into())),
        };
        let ctx = Context::new(Arc::new(config.clone()), queue);
        Ok(Local {
            runtime,
            ctx: Some(ctx),
            config: config.clone(),
        })
    }

    fn scan(
        &self,
        filter: &ListFilter,
        visit: &mut dyn FnMut(MessageView) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        let Some(ctx) = &self.ctx else {
            return Ok(());
        };
        let _guard = self.runtime.enter();
        for message in ctx.queue.iter(None) {
            let message = message?;
            if filter.matches(&message) {
                visit(MessageView::from(message))?;
            }
        }
        Ok(())
    }

    fn context(&self, id: &QueueId) -> Result<&Context, AdminError> {
        self.ctx
            .as_ref()
            .ok_or_else(|| AdminError::NotFound(id.clone()))
    }
}

impl Access for Local {
    fn each(
        &mut self,
        filter: &ListFilter,
        visit: &mut dyn FnMut(MessageView) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        self.scan(filter, visit)
    }

    fn json_list(&mut self, filter: &ListFilter, out: &mut dyn Write) -> anyhow::Result<()> {
        // A concrete buffer in front of the `dyn Write`: serde_json writes
        // many small pieces per object.
        let buffered = io::BufWriter::with_capacity(256 * 1024, out);
        let mut writer = JsonArrayWriter::new(buffered)?;
        self.scan(filter, &mut |message| writer.push(&message))?;
        writer.finish()?.flush()?;
        Ok(())
    }

    fn show(&mut self, id: &QueueId) -> anyhow::Result<MessageView> {
        let ctx = self.context(id)?;
        let _guard = self.runtime.enter();
        Ok(ops::show(ctx, id)?)
    }

    fn act(&mut self, action: Action, id: &QueueId) -> anyhow::Result<Option<MessageView>> {
        let ctx = self.context(id)?;
        let result = self.runtime.block_on(async {
            match action {
                Action::Retry => ops::retry(ctx, id).await.map(Some),
                Action::Hold => ops::hold(ctx, id).await.map(Some),
                Action::Release => ops::release(ctx, id).await.map(Some),
                Action::Bounce => ops::bounce(ctx, id).await.map(Some),
                Action::Delete => ops::delete(ctx, id).await.map(|()| None),
            }
        });
        Ok(result?)
    }

    fn act_on_ids(
        &mut self,
        action: Action,
        ids: &mut dyn Iterator<Item = String>,
        refused: &mut dyn FnMut(String),
    ) -> anyhow::Result<u64> {
        let Some(ctx) = &self.ctx else {
            // No spool: no message.
            for id in ids {
                let error = match ops::parse_id(&id) {
                    Ok(id) => AdminError::NotFound(id),
                    Err(error) => error,
                };
                refused(error.to_string());
            }
            return Ok(0);
        };
        let ids = ids.map(|text| ops::parse_id(&text));
        Ok(self
            .runtime
            .block_on(bulk::each_id(ctx, action, ids, &mut |error| {
                refused(error.to_string())
            })))
    }

    fn act_on_selection(&mut self, action: Action, filter: &ListFilter) -> anyhow::Result<u64> {
        let Some(ctx) = &self.ctx else { return Ok(0) };
        Ok(self
            .runtime
            .block_on(bulk::select(ctx, action, filter.clone()))?)
    }

    fn summary(&mut self) -> anyhow::Result<Summary> {
        let Some(ctx) = &self.ctx else {
            return Ok(Summary::default());
        };
        let _guard = self.runtime.enter();
        let mut summary = summary::build(&ctx.queue, chrono::Utc::now())?;
        summary::mark_suspended(&mut summary, |domain| {
            ctx.shaper.suspended_as_known(domain).is_some()
        });
        Ok(summary)
    }

    fn cat(&mut self, id: &QueueId, headers: bool, out: &mut dyn Write) -> anyhow::Result<()> {
        let ctx = self.context(id)?;
        let _guard = self.runtime.enter();
        let body = content::open(&ctx.queue, id)?;
        match content::copy(body, headers, out) {
            Ok(()) => Ok(()),
            // An io::Error, so `sluice queue cat ID | head` is no error.
            Err(content::CopyError::Output(error)) => Err(error.into()),
            Err(error) => Err(error.into()),
        }
    }

    /// Waits for any task an action started (a bounce's DSN), then flushes
    /// the queue to disk and releases the spool.
    fn suspend(
        &mut self,
        destination: &str,
        duration: Option<std::time::Duration>,
    ) -> anyhow::Result<SuspensionView> {
        if self.ctx.is_none() {
            // The spool keeps suspensions: create it.
            let options = QueueOptions {
                cache_capacity: self.config.spool.cache_capacity,
            };
            let path = self.config.spool.path.clone();
            let queue = self
                .runtime
                .block_on(async { Queue::open_admin(&path, options) })?;
            self.ctx = Some(Context::new(Arc::new(self.config.clone()), queue));
        }
        let ctx = self.ctx.as_ref().expect("the spool was opened just above");
        let destination = crate::delivery::shaping::normalize(destination);
        let duration = duration.unwrap_or_else(|| suspensions::default_duration(ctx, &destination));
        let until = chrono::Utc::now() + chrono::Duration::from_std(duration)?;
        let suspension = self.runtime.block_on(ctx.shaper.suspend(
            &destination,
            until,
            crate::delivery::shaping::BY_HAND.to_string(),
        ))?;
        Ok(SuspensionView::from(&suspension))
    }

    fn resume(&mut self, destination: &str) -> anyhow::Result<bool> {
        let Some(ctx) = &self.ctx else {
            return Ok(false);
        };
        let resumed = self.runtime.block_on(ctx.shaper.resume(destination))?;
        Ok(resumed)
    }

    fn suspensions(&mut self) -> anyhow::Result<SuspensionList> {
        let suspensions = match &self.ctx {
            Some(ctx) => ctx.shaper.list().iter().map(SuspensionView::from).collect(),
            None => Vec::new(),
        };
        Ok(SuspensionList { suspensions })
    }

    fn close(&mut self) -> anyhow::Result<()> {
        let Some(ctx) = self.ctx.take() else {
            return Ok(());
        };
        self.runtime.block_on(async {
            ctx.tasks.close();
            ctx.tasks.wait().await;
            ctx.queue.close().await
        })?;
        Ok(())
    }
}

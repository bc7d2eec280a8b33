//! `projects.*`: named containers of tasks. Sub-projects keep their full `a/b` path as the name.

use super::{str_field, Ctx};
use crate::server::auth::new_id;
use crate::server::envelope::ApiError;
use crate::server::params::Params;
use crate::server::query::{project as projection, sort, tags_match, NameFilter, Page};
use crate::server::store::{Doc, Docs, Kind};
use serde_json::{json, Value};

pub fn handle(ctx: &Ctx, action: &str, p: &Params) -> Option<Result<Value, ApiError>> {
    Some(match action {
        "create" => create(ctx, p),
        "get_all" | "get_all_ex" => get_all(ctx, p),
        "get_by_id" => get_by_id(ctx, p),
        "update" => update(ctx, p),
        "delete" => delete(ctx, p),
        "get_task_tags" | "get_model_tags" => get_tags(ctx, p),
        _ => return None,
    })
}

fn project<'d>(docs: &'d Docs, id: &str) -> Result<&'d Doc, ApiError> {
    docs.get(Kind::Project, id)
        .ok_or_else(|| ApiError::invalid_project(id))
}

fn check_name(docs: &Docs, name: &str, except: Option<&str>) -> Result<(), ApiError> {
    if name.trim().chars().count() < 3 {
        return Err(ApiError::validation(
            "field 'name' must be at least 3 characters",
        ));
    }
    if docs
        .map(Kind::Project)
        .iter()
        .any(|(id, p)| Some(id.as_str()) != except && str_field(p, "name") == name)
    {
        return Err(ApiError::not_unique(&format!("name={name}")));
    }
    Ok(())
}

fn create(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let name = p.req_str("name")?.trim().to_string();
    let description = p.str("description")?.unwrap_or("").to_string();
    let tags = p.str_list("tags")?.unwrap_or_default();
    let system_tags = p.str_list("system_tags")?.unwrap_or_default();
    let dest = p.str("default_output_destination")?.map(str::to_string);
    ctx.store.write(|docs| {
        check_name(docs, &name, None)?;
        let id = new_id();
        let identity = ctx.identity();
        let basename = name.rsplit('/').next().unwrap_or(&name).to_string();
        let mut doc = json!({
            "id": id, "name": name, "basename": basename, "description": description,
            "user": identity.user, "company": identity.company, "created": ctx.now_iso(),
            "last_update": ctx.now_iso(), "tags": tags, "system_tags": system_tags,
        });
        if let Some(d) = dest {
            doc["default_output_destination"] = json!(d);
        }
        docs.insert(
            Kind::Project,
            &id,
            doc.as_object().expect("literal object").clone(),
        );
        Ok(json!({"id": id}))
    })
}

fn get_all(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let ids = match p.get("id") {
        Some(Value::String(s)) => Some(vec![s.clone()]),
        _ => p.str_list("id")?,
    };
    let name = p.str("name")?.map(NameFilter::new);
    let basename = p.str("basename")?.map(NameFilter::new);
    let tags = p.str_list("tags")?;
    let system_tags = p.str_list("system_tags")?;
    let search_hidden = p.bool("search_hidden", false)? || ids.is_some();
    let only_fields = p.str_list("only_fields")?;
    let order_by = p.str_list("order_by")?.unwrap_or_default();
    let page = Page::of(p)?;
    ctx.store.read(|docs| {
        let mut matched: Vec<&Doc> = docs
            .map(Kind::Project)
            .values()
            .filter(|d| {
                ids.as_ref()
                    .is_none_or(|l| l.iter().any(|i| i == str_field(d, "id")))
                    && name
                        .as_ref()
                        .is_none_or(|n| n.matches(str_field(d, "name")))
                    && basename
                        .as_ref()
                        .is_none_or(|n| n.matches(str_field(d, "basename")))
                    && tags.as_ref().is_none_or(|t| tags_match(d, "tags", t))
                    && system_tags
                        .as_ref()
                        .is_none_or(|t| tags_match(d, "system_tags", t))
                    && (search_hidden || !super::tasks::has_tag(d, "system_tags", "hidden"))
            })
            .collect();
        sort(&mut matched, &order_by);
        let projects: Vec<Value> = matched
            .into_iter()
            .skip(page.skip)
            .take(page.take)
            .map(|d| projection(d, only_fields.as_deref()))
            .collect();
        let mut out = json!({"projects": projects});
        if page.scroll {
            out["scroll_id"] = json!((page.skip + page.take).to_string());
        }
        Ok(out)
    })
}

fn get_by_id(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("project")?;
    ctx.store
        .read(|docs| Ok(json!({"project": project(docs, id)?})))
}

fn update(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("project")?;
    let mut fields = serde_json::Map::new();
    for f in ["description", "default_output_destination"] {
        if let Some(v) = p.str(f)? {
            fields.insert(f.into(), json!(v));
        }
    }
    for f in ["tags", "system_tags"] {
        if let Some(v) = p.str_list(f)? {
            fields.insert(f.into(), json!(v));
        }
    }
    let name = p.str("name")?.map(|s| s.trim().to_string());
    ctx.store.write(|docs| {
        project(docs, id)?;
        if let Some(name) = &name {
            check_name(docs, name, Some(id))?;
            fields.insert("name".into(), json!(name));
            fields.insert(
                "basename".into(),
                json!(name.rsplit('/').next().unwrap_or(name)),
            );
        }
        let doc = docs.doc_mut(Kind::Project, id).expect("checked above");
        for (k, v) in &fields {
            doc.insert(k.clone(), v.clone());
        }
        doc.insert("last_update".into(), json!(ctx.now_iso()));
        Ok(json!({"updated": 1, "fields": fields}))
    })
}

fn delete(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("project")?;
    let force = p.bool("force", false)?;
    ctx.store.write(|docs| {
        project(docs, id)?;
        let tasks = docs
            .map(Kind::Task)
            .values()
            .filter(|t| str_field(t, "project") == id)
            .count();
        if tasks > 0 && !force {
            return Err(ApiError::new(
                400,
                403,
                format!("Project has associated tasks: project={id}, tasks={tasks}"),
            ));
        }
        docs.remove(Kind::Project, id);
        Ok(json!({"deleted": 1, "disassociated_tasks": tasks}))
    })
}

fn get_tags(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let projects = p.str_list("projects")?;
    ctx.store.read(|docs| {
        let mut tags: Vec<String> = Vec::new();
        let mut system_tags: Vec<String> = Vec::new();
        for t in docs.map(Kind::Task).values() {
            if projects
                .as_ref()
                .is_some_and(|l| !l.iter().any(|x| x == str_field(t, "project")))
            {
                continue;
            }
            for (field, out) in [("tags", &mut tags), ("system_tags", &mut system_tags)] {
                if let Some(l) = t.get(field).and_then(Value::as_array) {
                    out.extend(l.iter().filter_map(Value::as_str).map(str::to_string));
                }
            }
        }
        for l in [&mut tags, &mut system_tags] {
            l.sort();
            l.dedup();
        }
        let _ = tags_match;
        Ok(json!({"tags": tags, "system_tags": system_tags}))
    })
}

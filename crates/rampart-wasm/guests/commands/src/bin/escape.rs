//! Tries every way out of its preopened /data: `..`, an absolute path elsewhere, a symlink
//! placed inside /data that points outside, and writing into a read-only preopen. Prints
//! what happened to each; exits 3 if any attempt reached outside, 0 if all were refused.

fn attempt(what: &str, result: std::io::Result<String>) -> bool {
    match result {
        Ok(s) => {
            println!("{what}: ESCAPED ({} bytes)", s.len());
            true
        }
        Err(e) => {
            println!("{what}: refused ({e})");
            false
        }
    }
}

fn main() {
    let mut escaped = false;
    escaped |= attempt("dotdot", std::fs::read_to_string("/data/../secret.txt"));
    escaped |= attempt("deep-dotdot", std::fs::read_to_string("/data/sub/../../secret.txt"));
    escaped |= attempt("absolute", std::fs::read_to_string("/etc/passwd"));
    escaped |= attempt("symlink", std::fs::read_to_string("/data/link-out"));
    escaped |= attempt("symlink-dir", std::fs::read_to_string("/data/dir-out/secret.txt"));
    let write = std::fs::write("/data/new.txt", "x").map(|()| String::from("x"));
    escaped |= attempt("write-read-only", write);
    std::process::exit(if escaped { 3 } else { 0 });
}

//! A well-behaved command: prints its arguments and GREETING, reads /data/in.txt, writes
//! /out/out.txt when /out is there, and exits with the code given as its last argument.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("args={:?}", &args[1..]);
    println!("greeting={}", std::env::var("GREETING").unwrap_or_default());
    println!("home={}", std::env::var("HOME").unwrap_or_else(|_| "unset".into()));
    match std::fs::read_to_string("/data/in.txt") {
        Ok(s) => println!("in={}", s.trim()),
        Err(e) => println!("in: {e}"),
    }
    match std::fs::write("/out/out.txt", "written by the guest\n") {
        Ok(()) => println!("out: written"),
        Err(e) => println!("out: {e}"),
    }
    let code = args.last().and_then(|a| a.parse().ok()).unwrap_or(0);
    std::process::exit(code);
}

package main

import (
	"fmt"
	"log"
	"net/http"
	"sync/atomic"
)

var hits atomic.Int64

func handler(w http.ResponseWriter, r *http.Request) {
	n := hits.Add(1)
	fmt.Fprintf(w, "hello, visitor number %d\n", n)
}

func main() {
	http.HandleFunc("/", handler)
	log.Println("listening on 127.0.0.1:8080")
	log.Fatal(http.ListenAndServe("127.0.0.1:8080", nil))
}
